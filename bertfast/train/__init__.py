"""Training from the command line: ``bertfast finetune`` and ``bertfast pretrain``.

Imports the model and its heads; nothing in the model imports this package.
"""
