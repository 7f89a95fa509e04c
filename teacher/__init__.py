"""Stage one: teachers (`flow`, `hypir`) and their training (`teacher/train.py`).

Other stages never import this package: they open a teacher's model folder with
`core.models.load_model`, which imports the class its manifest names.
"""
