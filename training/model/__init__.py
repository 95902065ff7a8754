"""QW-Net itself: the network, its HDR range compression and warp, the fast GPU paths, and its cost."""
