"""One schema for the project's JSON files: the hardware settings file and recording.json.

Every section is a pydantic model with ``extra="forbid"`` (an unknown or misspelt
field is an error, not ignored), strict types (``"2.5"`` is not a number, ``true``
is not 1) and finite numbers only (NaN and infinity are refused). The physical
rules (NA below the medium index, the sampling rule, square camera pixels) are
those of :class:`~nvplive.recon.optics.Optics` and
:class:`~nvplive.recon.optics.VolumeGeometry`, which each section builds, so they
are stated once. :func:`validate` turns the first problem into one sentence that
names the file and the field (``settings.json: field "optics.na": …``).

The formats themselves are documented in ``docs/acquisition.md`` (settings) and
``docs/format.md`` (recordings).
"""

from __future__ import annotations

import builtins
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nvplive.recon.optics import Optics, VolumeGeometry
from nvplive.recon.pupil import SOURCE_RIM_WIDTH

PositiveNumber = Annotated[float, Field(gt=0)]
NonNegativeNumber = Annotated[float, Field(ge=0)]
Position = Annotated[list[float], Field(min_length=3, max_length=3)]
BitDepth = Annotated[int, Field(ge=1, le=16)]

#: Defaults of an omitted ``camera_model`` section (those of ``recon.simulate.CameraModel``).
DEFAULT_OFFSET, DEFAULT_GAIN, DEFAULT_READ_NOISE = 100.0, 1.0, 1.6


class Section(BaseModel):
    """Base of every section: unknown fields refused, strict types, finite numbers."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class OpticsSection(Section):
    """``optics``: as :class:`~nvplive.recon.optics.Optics` (µm)."""

    wavelength_um: PositiveNumber
    n_medium: PositiveNumber
    na: PositiveNumber
    na_source: PositiveNumber | None = None
    emission_fwhm_um: NonNegativeNumber = 0.03

    def optics(self) -> Optics:
        """The optics (checked: NA below the medium index)."""
        return Optics(**self.model_dump())

    @model_validator(mode="after")
    def _physical(self) -> OpticsSection:
        self.optics()
        return self


class VolumeSection(Section):
    """``volume``: as :class:`~nvplive.recon.optics.VolumeGeometry` (voxels, µm)."""

    shape_zyx: Annotated[list[Annotated[int, Field(gt=0, lt=2**31)]], Field(min_length=3, max_length=3)]
    voxel_um_zyx: Annotated[list[PositiveNumber], Field(min_length=3, max_length=3)]
    focal_plane_z_um: float | None = None
    camera_binning: Annotated[int, Field(ge=1)] = 1

    def geometry(self) -> VolumeGeometry:
        """The geometry (checked: binning divides the frame, square camera pixels)."""
        geometry = VolumeGeometry(tuple(self.shape_zyx), tuple(self.voxel_um_zyx), self.focal_plane_z_um,  # type: ignore[arg-type]
                                  self.camera_binning)
        geometry.camera_pixel_um  # noqa: B018 (raises GeometryError for rectangular pixels)
        return geometry

    @model_validator(mode="after")
    def _physical(self) -> VolumeSection:
        self.geometry()
        return self


class CameraSection(Section):
    """``camera`` of recording.json: the camera as seen from the sample."""

    pixel_size_um: PositiveNumber
    offset: NonNegativeNumber
    gain: PositiveNumber
    read_noise: NonNegativeNumber
    bit_depth: BitDepth = 16


class CameraModelSection(Section):
    """``camera_model`` of a settings file: ADU offset, gain, read noise and (optionally) the bit depth."""

    offset: NonNegativeNumber = DEFAULT_OFFSET
    gain: PositiveNumber = DEFAULT_GAIN
    read_noise: NonNegativeNumber = DEFAULT_READ_NOISE
    bit_depth: BitDepth | None = None


class SourceSelectionSection(Section):
    """``source_selection``: a config group's presets, or one device property's values, one per view."""

    group: str | None = None
    presets: Annotated[list[str], Field(min_length=1)] | None = None
    device: Annotated[str, Field(min_length=1)] | None = None
    property: Annotated[str, Field(min_length=1)] | None = None
    values: Annotated[list[str | int | float], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_way(self) -> SourceSelectionSection:
        by_device = (self.device, self.property, self.values)
        if self.presets is not None and any(v is not None for v in by_device):
            raise ValueError("give either 'presets' (with 'group') or 'device', 'property' and 'values', not both")
        if self.presets is None and any(v is None for v in by_device):
            raise ValueError("needs either 'presets' (with 'group') or 'device', 'property' and 'values'")
        return self

    @builtins.property  # the field "property" shadows the builtin here
    def n_views(self) -> int:
        """Views selected."""
        return len(self.presets if self.presets is not None else self.values or ())


class HardwareSettingsFile(Section):
    """The hardware settings file (``docs/acquisition.md``)."""

    format: Literal["nvp-live-hardware-settings"]
    version: Literal[1]
    source_selection: SourceSelectionSection
    sources_um_xyz: Annotated[list[Position], Field(min_length=1)]
    optics: OpticsSection
    volume: VolumeSection
    camera_model: CameraModelSection = CameraModelSection()
    camera: Annotated[str, Field(min_length=1)] | None = None
    exposure_ms: PositiveNumber | None = None
    roi: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=4, max_length=4)] | None = None
    hardware_sequencing: bool = True
    prefer_instrument: bool = False
    bead_diameter_um: NonNegativeNumber = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> HardwareSettingsFile:
        views = self.source_selection.n_views
        if len(self.sources_um_xyz) != views:
            raise ValueError(f"'sources_um_xyz' has {len(self.sources_um_xyz)} positions but 'source_selection' "
                             f"selects {views} views")
        self.volume.geometry().check_sampling(self.optics.optics())
        return self


class OverrideEntry(Section):
    """A value where the instrument won over the settings."""

    settings: float | int | None
    instrument: float | int | None


class InstrumentSection(Section):
    """``instrument`` of recording.json: what the microscope reported (``acquisition.instrument``)."""

    camera: str
    pixel_size_um: PositiveNumber | None
    pixel_size_config: str
    binning: Annotated[int, Field(ge=1)]
    bit_depth: Annotated[int, Field(ge=1, le=32)]
    roi_xywh: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=4, max_length=4)]
    exposure_ms: PositiveNumber
    trigger_mode: Literal["hardware", "software"]
    overrides: dict[str, OverrideEntry] = {}


class ViewEntry(Section):
    """One entry of ``views``."""

    source_um_xyz: Position
    refined_source_um_xyz: Position | None = None


class RecordingHeader(Section):
    """The fixed sections of recording.json (the lists of timepoints and volumes are checked apart)."""

    format: Literal["nvp-live-recording"]
    version: Literal[1]
    software: str = ""
    created: str
    closed: bool = False
    optics: OpticsSection
    camera: CameraSection
    volume: VolumeSection
    views: Annotated[list[ViewEntry], Field(min_length=1)]
    timepoints: list[Any]
    volumes: list[Any]
    ground_truth: list[Any]
    extra: dict[str, Any]
    instrument: InstrumentSection | None = None
    bead_diameter_um: NonNegativeNumber = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> RecordingHeader:
        refined = sum(v.refined_source_um_xyz is not None for v in self.views)
        if refined not in (0, len(self.views)):
            raise ValueError(f"refined_source_um_xyz must be in every view or in none ({refined} of {len(self.views)})")
        return self


class TimepointEntry(Section):
    """One entry of ``timepoints`` (and of a journal's ``timepoint`` line)."""

    index: Annotated[int, Field(ge=0)]
    timestamps_s: list[float]
    frames: list[dict[str, Any]]


class VolumeEntry(Section):
    """One entry of ``volumes``."""

    timepoint: Annotated[int, Field(ge=0)]
    method: Annotated[str, Field(min_length=1)]
    settings: dict[str, Any]


class GroundTruthEntry(Section):
    """One entry of ``ground_truth``."""

    timepoint: Annotated[int, Field(ge=0)]


class PupilFile(Section):
    """``pupil.json``: a calibrated detection pupil (``recon.pupil.PupilParameters``) and where it came from.

    Stored in a recording folder (an optional addition to format v1) or anywhere
    (``nvplive calibrate -o``); docs/format.md describes it.
    """

    format: Literal["nvp-live-pupil"]
    version: Literal[1]
    zernike_rad: list[float]
    first_noll_index: Literal[2] = 2
    apodisation: list[float] = []
    sine_condition: bool = False
    source_edge_na: list[float] = []
    source_beyond_na: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    source_rim_width: Annotated[float, Field(gt=0.0, le=0.5)] = SOURCE_RIM_WIDTH
    optics: OpticsSection
    calibrated_from: str
    method: Literal["frames", "bead-z-stack"]
    created: str
    fitted_noll: list[Annotated[int, Field(ge=2)]] = []
    residual: NonNegativeNumber | None = None
    residual_before: NonNegativeNumber | None = None
    bead_diameter_um: NonNegativeNumber | None = None


M = TypeVar("M", bound=BaseModel)


def _field_name(loc: tuple[int | str, ...], prefix: str) -> str:
    name = prefix
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif part.startswith("function-") or part in ("str", "int", "float", "list[...]"):
            continue  # pydantic's tags of union members, not fields
        else:
            name += f".{part}" if name else part
    return name


def describe(error: ValidationError, where: str, prefix: str = "") -> str:
    """One sentence for the first problem of a validation, e.g. ``where: field "a.b[2]": what is wrong``."""
    first = error.errors(include_url=False)[0]
    name = _field_name(tuple(first["loc"]), prefix)
    message = str(first["msg"]).removeprefix("Value error, ").rstrip(".")
    if first["type"] == "missing":
        return f'{where}: field "{name}" is missing.'
    if first["type"] == "extra_forbidden":
        return f'{where}: field "{name}" is not part of the format (misspelt?).'
    shown = ""
    if "input" in first and first["type"] not in ("value_error", "assertion_error") and not isinstance(first["input"], dict):
        text = repr(first["input"])
        shown = f" (got {text if len(text) <= 60 else text[:57] + '...'})"
    where_field = f'field "{name}"' if name else "the top level"
    return f"{where}: {where_field}: {message}{shown}."


def validate(model: type[M], data: Any, where: str, error: type[Exception], prefix: str = "") -> M:
    """``model`` validated from ``data`` (parsed JSON); ``error`` with one sentence naming the file and field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(describe(exc, where, prefix)) from None
