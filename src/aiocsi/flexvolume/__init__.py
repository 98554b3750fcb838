"""The Flexvolume front end: the kubelet's exec call model on the same volume engine.

`executable.py` is what the kubelet runs (stdlib-only, installed by `install.py`);
`server.py` serves its requests in the driver; `frontend.py` turns each op into engine
calls. docs/flexvolume.md describes the whole.
"""
