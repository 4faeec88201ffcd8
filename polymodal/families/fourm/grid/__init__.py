"""The picture grids of 4M (``generations.png``, ``samples.png``): columns titled in words, each prediction beside
its ground truth, panels that explain their colours (semseg classes, the depth scale) and boxes."""
