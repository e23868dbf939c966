"""Icons, default configurations and demo settings shipped with nvp-live."""
