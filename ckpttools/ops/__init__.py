"""Operations: plain functions returning frozen result dataclasses. They never print or exit."""
