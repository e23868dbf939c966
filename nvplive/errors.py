"""The project's error types: every user-facing failure is one of these."""


class NvpLiveError(Exception):
    """Base class: a problem the user can act on, shown as one sentence."""


class GeometryError(NvpLiveError, ValueError):
    """Optics or sampling that the forward model cannot represent."""


class RecordingError(NvpLiveError):
    """A recording folder that is missing, malformed or inconsistent."""


class AcquisitionError(NvpLiveError):
    """The microscope (real or simulated) failed or is misconfigured."""


class ReconstructionError(NvpLiveError):
    """Reconstruction could not proceed (diverged, out of memory, bad input)."""


class RecordingLockedError(RecordingError):
    """Another live process is writing the recording (it holds the recording's lock)."""


class NoBeadError(NvpLiveError, ValueError):
    """A bead z-stack shows no bead to fit, or none alone in its crop."""
