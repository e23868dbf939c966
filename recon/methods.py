"""The reconstruction methods a user chooses from, defined once.

Torch-free, so that the command line and the app list them without importing torch;
:data:`nvplive.recon.representations.REPRESENTATIONS` binds each name to its class.
"""

#: Method name (``ReconConfig.method``) → its label in the app, in the order offered.
METHOD_LABELS: dict[str, str] = {
    "nvp": "NVP (neural volumetric prior)",
    "explicit": "Explicit voxels",
    "triplane": "Triplane",
}
#: The method names, in the order offered.
METHODS: tuple[str, ...] = tuple(METHOD_LABELS)
