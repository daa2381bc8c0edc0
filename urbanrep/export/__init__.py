"""Export of a run: GIS files (GeoParquet, GeoPackage, GeoJSON, CSV), figures and an HTML report.

Tables follow srai's contract: DataFrames indexed by ``region_id``, joined to the regions
GeoDataFrame (:func:`join_regions`). Figures and the report need matplotlib
(``urbanrep[plotting]``), imported only when drawing.
"""

from urbanrep.export.gis import (
    DEFAULT_FORMATS,
    FORMATS,
    ExportError,
    export_gis,
    export_run,
    join_regions,
    predictions_wide,
    read_run_tables,
    region_table,
)
from urbanrep.export.maps import (
    embedding_rgb,
    make_figures,
    plot_embedding_map,
    plot_fusion_weights,
    plot_loss,
    plot_predictions,
)
from urbanrep.export.report import render_report, write_report

__all__ = [
    "DEFAULT_FORMATS",
    "FORMATS",
    "ExportError",
    "embedding_rgb",
    "export_gis",
    "export_run",
    "join_regions",
    "make_figures",
    "plot_embedding_map",
    "plot_fusion_weights",
    "plot_loss",
    "plot_predictions",
    "predictions_wide",
    "read_run_tables",
    "region_table",
    "render_report",
    "write_report",
]
