"""Models: training, ONNX export, the catalog, captured training data and the chunk server."""
