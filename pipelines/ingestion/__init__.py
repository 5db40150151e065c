"""Images into the dataset store: Fashion-MNIST, scikit-learn's digits, and any folder or bucket of pictures."""
