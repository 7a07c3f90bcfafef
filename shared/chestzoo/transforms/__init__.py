"""MONAI transforms that the bundles share and MONAI lacks."""
