"""The ``fedjax-keras`` command line (see docs/cli.md)."""

from fedjax_keras.cli._errors import UsageError as UsageError
from fedjax_keras.cli.config import Config as Config
from fedjax_keras.cli.main import main as main
