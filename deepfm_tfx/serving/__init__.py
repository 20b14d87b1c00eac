"""`deepfm-tfx serve`: the model repository on TF Serving's REST and gRPC APIs.

    server.py        the process: flags, the gRPC and REST servers, shutdown
    loader.py        models.config -> loaded versions and labels, hot reload
    servable.py      one loaded version: its Session, signatures and warmup
    batching.py      concurrent requests to a signature run as one Session.run
    requests.py      JSON and TensorProto requests -> numpy feeds, and back
    grpc_service.py  PredictionService and ModelService
    rest.py          /v1/models/... on aiohttp
    warmup.py        assets.extra/tf_serving_warmup_requests, written and replayed
    model_status.py  waits until a server reports a version AVAILABLE (no TensorFlow import)
    errors.py        TF Serving's status codes and their HTTP mapping
"""
