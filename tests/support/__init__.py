"""What the tests share: configs composed as the entry points compose them, tiny models, stand-in
weights, miniature datasets and probe callbacks. Test modules import helpers from here, never from
each other; fixtures live in the conftest.py files."""
