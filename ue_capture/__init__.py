"""Unreal Engine capture: the in-editor MRQ script, the host-side launcher, and converters of Unreal formats."""
