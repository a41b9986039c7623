import logging
import sys

from mlworker.train.cli import get_args_parser, main
from mlworker.train.state import WeightsUnavailable

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
try:
    main(get_args_parser().parse_args())
except WeightsUnavailable as exc:  # a setup problem the message explains: no traceback
    sys.exit(f"python -m mlworker.train: error: {exc}")
