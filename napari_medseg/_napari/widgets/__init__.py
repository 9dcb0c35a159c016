"""The dock widgets (Annotate, Train, Predict) and their parts: main-thread Qt code only."""
