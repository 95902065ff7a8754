"""The builtin OpenGL renderer and its scenes: captures without Unreal."""
