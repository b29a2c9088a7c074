"""TF Serving's generated Python protos (tensorflow-serving-api 2.21.0) and the TensorFlow protos
they import, vendored so that `memefly[serve]` needs no TensorFlow; made by
`python docker/slim_serving_protos.py --package gateway.backends.serving_protos gateway/backends/serving_protos`.
Generated code, Apache License 2.0 (the TensorFlow and TF Serving authors): not edited by hand.
gateway/backends/protos.py uses them only where tensorflow-serving-api is not installed."""
