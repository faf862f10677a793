"""The formal contract of distref: typed API, behaviour catalogue, model."""
