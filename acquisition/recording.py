"""Recording format, version 1 (docs/format.md): writer, reader and crash recovery.

The public names of the format, in one place; they live in :mod:`.recording_format`
(names, metadata, ``recording.json``), :mod:`.tiff_pages` (TIFF page plumbing),
:mod:`.recording_writer` and :mod:`.recording_reader`.

A recording is a folder ``NAME.fdt/``::

    recording.json        optics, camera, volume, views, per-timepoint timestamps and
                          frame metadata, which stored volume belongs to which timepoint
    frames.ome.tif        uint16 camera frames, axes TVYX (OME: T, C = view, Y, X)
    volumes.ome.tif       float32 Δn, axes TZYX, one Z-stack per reconstructed timepoint
    ground_truth.ome.tif  float32 Δn, axes TZYX, simulated recordings only
    journal.jsonl         only while writing / after an interruption (see below)

Crash safety. The TIFFs are append-only BigTIFFs written one page per frame (or per
z-slice); every page is complete (IFD and pixels) when its ``write`` returns.
After the last view of a timepoint (or after a volume) the TIFF is flushed and
fsync'ed, and only then is one line appended (and fsync'ed) to ``journal.jsonl``.
``recording.json`` is written atomically (temporary file, fsync, ``os.replace``) when
the writer starts and when it closes; on a clean close the journal is merged into it
and deleted, and the OME-XML (axes, physical sizes) is installed in each TIFF with a
single 16-byte pointer update after the XML itself is on disk. A reader therefore
sees, at any moment, ``recording.json`` + the journal's complete lines, and every
page they mention is on disk. Pages beyond that (an interrupted timepoint) and an
incomplete last journal line are ignored. :func:`recover_recording` turns an
interrupted recording into a cleanly closed one.

One writer. Every writer holds the recording's lock (``.lock``, see
:mod:`.recording_lock`) while it writes; readers never lock and never change a
recording. An offline reconstruction writes its volumes to ``volumes.ome.tif.new``
and replaces the old volumes and their labels in one commit when the run completes
(:meth:`RecordingWriter.replace_volumes`; docs/format.md, "Replacing the volumes").
"""

from .recording_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    FRAMES_NAME,
    GROUND_TRUTH_NAME,
    JOURNAL_NAME,
    JSON_NAME,
    LOG_NAME,
    SUFFIX,
    VOLUMES_NAME,
    VOLUMES_PENDING_NAME,
    CameraSettings,
    RecordingMeta,
)
from .recording_reader import Recording, TimepointData, open_recording, recover_recording
from .recording_writer import RecordingWriter

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FRAMES_NAME",
    "GROUND_TRUTH_NAME",
    "JOURNAL_NAME",
    "JSON_NAME",
    "LOG_NAME",
    "SUFFIX",
    "VOLUMES_NAME",
    "VOLUMES_PENDING_NAME",
    "CameraSettings",
    "Recording",
    "RecordingMeta",
    "RecordingWriter",
    "TimepointData",
    "open_recording",
    "recover_recording",
]
