"""Entry point of the HDF5 writer child process (see recorder.h5proc)."""
import sys

from recorder.h5proc import main

if __name__ == "__main__":
    sys.exit(main())
