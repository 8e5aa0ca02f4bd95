"""The V2 (Open Inference) protocol, as arrays: signature, request decoding, limits, metadata.

No torch here: this layer turns V2 requests into checked numpy arrays and arrays into V2 responses.
"""
