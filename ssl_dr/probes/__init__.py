"""Frozen-feature probes: grade DR from a frozen encoder's features, the way the SSL field judges a representation.

One forward pass per image (``features``, or the non-deep reference ``classical``), stored by content key
(``store``) and reused by every later job; then a linear probe (``linear``: logistic regression, C chosen on
validation) or a weighted cosine k-NN (``knn``), scored with the fine-tune's own metric keys (``scores``);
``evaluate`` runs one probe on one split end to end. Layer: above ``data`` and ``models``, below ``training``.
"""
