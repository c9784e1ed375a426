"""Online inference over HTTP: the model holder (registry, alias polling), the micro-batcher,
request reading within limits, the simple API and the Open Inference Protocol."""
