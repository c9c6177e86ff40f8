"""What training (``models/``), export (``export/``) and serving (``service/``) share, defined once.

The model card and checksums, the special token ids, the ONNX graphs' input/output names, padding,
text encoding and truncation, the batch cost model, and the translation search and its onnxruntime
runtime. Why a package of its own: when these lived under ``service/``, training imported the server
to reach them, and the copies that did not (padding, special ids, truncation) drifted apart. This
package imports none of ``models``, ``export``, ``service`` or ``bench`` (``tests/test_imports.py``
enforces it) and never torch: the serving install must work without it.
"""
