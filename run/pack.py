"""Pack an image folder, CIFAR binary batches, scikit-learn digits or Fashion-MNIST into tar shards.

    python run/pack.py imagefolder ROOT --out DIR
    python run/pack.py cifar ROOT --out DIR --split train
    python run/pack.py digits --out DIR --split train
    python run/pack.py fashion-mnist --out DIR --split test

The logic lives in ``minivit.io.pack``; see ``python run/pack.py -h``.
"""
import sys

from minivit.io.pack import main

if __name__ == "__main__":
    sys.exit(main())
