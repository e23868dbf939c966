"""nvp-live: live 3D refractive index from sparse fluorescence diffraction images."""

__version__ = "0.1.0"
