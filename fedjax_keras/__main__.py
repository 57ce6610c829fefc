"""``python -m fedjax_keras`` runs the ``fedjax-keras`` command."""

from fedjax_keras.cli.main import main_exit

if __name__ == "__main__":
    main_exit()
