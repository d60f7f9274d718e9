"""The data-aware recipe: choose units by importance (``importance``), rotate heads to their principal
directions (``rotate``), refit layers in closed form (``compensate``) on calibration inputs
(``calibration``); ``recipe`` runs them in order."""
