"""Money: what a reply cost, from the prices kept in settings."""

from decimal import Decimal

from django.conf import settings

MILLION = Decimal(1_000_000)


def reply_cost(*, model: str, input_tokens: int | None, output_tokens: int | None) -> Decimal:
    """USD for one reply; unknown models and missing counts cost nothing."""
    spec = settings.CHAT_MODELS.get(model)
    if spec is None:
        return Decimal(0)
    input_price, output_price = (Decimal(str(p)) for p in spec["price_per_million"])
    return (
        Decimal(input_tokens or 0) * input_price + Decimal(output_tokens or 0) * output_price
    ) / MILLION
