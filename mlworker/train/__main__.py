import logging

from mlworker.train.cli import get_args_parser, main

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
main(get_args_parser().parse_args())
