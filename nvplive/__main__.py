from nvplive.cli import main

raise SystemExit(main())
