"""Communication: bytes on the wire per round and site (:mod:`.wire`) and NVFlare's model quantization
filters per job (:mod:`.quantize`). Neither server nor client code: both sides' job configs use them."""
