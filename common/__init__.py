"""The leaf types every layer shares: errors (errors.py), the records that flow between stages
(records.py), text normalisation and content ids (text.py), file digests (files.py).

The layers import one way (tests/unit/test_import_graph.py): ``services`` -> ``pipelines`` ->
``index``, and each of them may import ``common``, which imports none of them.
"""
