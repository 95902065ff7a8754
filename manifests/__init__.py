"""The scene (scenes/*.yaml) and dataset (datasets/*.yaml) manifests, shipped with the package as data."""
