"""``routing-gateway`` with the toy protocol registered: what a deployment adding a protocol runs."""

import sys

import toy_protocol  # beside this script

import adapters
from gateway.cli import main

adapters.register(toy_protocol)
sys.exit(main(sys.argv[1:]))
