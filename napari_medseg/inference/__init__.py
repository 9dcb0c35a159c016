"""Pure inference: tissue masks, tiling and blending, the tiled predictor, viewport preview."""
