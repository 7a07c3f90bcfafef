"""chestzoo: shared components for the chest-imaging MONAI Bundles."""

__version__ = "0.1.0"
