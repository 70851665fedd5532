"""Rollouts (filled in below)."""
from fastapi import APIRouter

router = APIRouter(prefix="/rollouts", tags=["rollouts"])
