from tandem.schedules.stages import SCHEDULES, Stage, build_stages

__all__ = ["SCHEDULES", "Stage", "build_stages"]
