"""MONAI/ignite engines and handlers shared by the bundles."""
