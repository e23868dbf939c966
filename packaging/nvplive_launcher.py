"""Entry point of the desktop bundle: the ``nvplive`` command line, frozen by PyInstaller."""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()  # worker processes (e.g. a Dask LocalCluster) re-enter here in a frozen app
    from nvplive.cli import main

    sys.exit(main())
