"""fedjax_keras: fast federated-learning simulation for Keras 3 models on JAX."""
