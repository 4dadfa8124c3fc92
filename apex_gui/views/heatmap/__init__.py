"""The Map tab and its neighbours: the layer x role precision heatmap (painting, geometry,
tooltips, legend, sensitivity overlay) and the Tensors and Metadata tabs."""
