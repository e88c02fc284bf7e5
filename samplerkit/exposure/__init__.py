"""Exposure bias, measured as Ning et al. 2023 ("Input Perturbation Reduces Exposure Bias in
Diffusion Models", Sec. 4, Sec. 5.3, App. A.1 and A.5) measure it.

* ``delta`` -- delta_t (App. A.1, Alg. 4, Tab. 6): from a real image x0, x_t by Eq. 4 with a
  fresh eps, then t steps of the noise-free DDPM mean (Alg. 2 line 4 without sigma_t z); delta =
  ||x0 - x0_hat||_1 / M per image (pixels in [-1, 1], so delta <= 2 once x0_hat is clipped).
* ``fid`` -- the variant of Sec. 4 / Tab. 1: the same start points, the stochastic reverse chain
  (Alg. 2 started from x_t), FID of the set of x0_hat against the real set.
* ``nu`` -- the prediction error (Sec. 5.3, Fig. 2): e_t = x0_hat - x0 with x0_hat from
  eps_hat = eps_theta(x_t, t) at the ground-truth x_t of Eq. 4; nu_t is its standard deviation.
* ``normality`` -- App. A.5, Fig. 6: e_t standardized with the pixel-independent mean mu_t and
  std nu_t, then per pixel a Shapiro-Wilk test on 50 randomly chosen values at alpha = 0.05.
* ``eps-norm`` -- Ning et al. 2024 (ES), Fig. 6: ||eps_hat||_2 per image along a sampling chain
  (DDPM ancestral from x_T) and along the forward chain (x_t of Eq. 4) at the same t, their ratio,
  and the uniform lambda that ratio suggests (a suggestion; the paper picks lambda by FID).

Remedies (:mod:`samplerkit.remedies`) are measured as model variants: Epsilon Scaling wraps the
denoiser, the time shift rides on :class:`ModelSpec` and changes the delta, fid and eps-norm chains.

x0_hat is clipped to [-1, 1] by default (guided-diffusion's sampling loop, which the authors'
measurements run). Discrete-time models run on their own T-step chain, any other denoiser on a
reference DDPM schedule through D(x; sigma); a respaced chain is labelled as such in every row.

Modules: :mod:`.chain` (the chains and x0_hat), :mod:`.measures` (statistics), :mod:`.harness`
(settings, plan, the resumable run), :mod:`.report` (tables, figures, image pairs).
"""

from .chain import (
    MeasurementChain,
    ancestral_chain,
    chain_sigmas,
    check_t,
    ddpm_mean_chain,
    ddpm_mean_step,
    default_variance,
    measurement_chain,
    predict_x0,
    prediction_error,
    reference_alpha_bar,
)
from .harness import (
    CSV_COLUMNS,
    KEY_COLUMNS,
    MODES,
    Cell,
    ModelSpec,
    Report,
    Settings,
    add_paired_differences,
    cost_summary,
    measure,
    per_image_path,
    plan,
    results_csv,
    run,
    sampling_eps_norms,
)
from .measures import (
    INTERVAL,
    eps_norms,
    error_moments,
    feature_stats,
    l1_per_image,
    nu_summary,
    paired_difference,
    shapiro_rejections,
    suggested_eps_scaler,
    summarize,
)
from .report import (
    companion_path,
    eps_norm_text,
    measured_rows,
    nu_text,
    pair_image,
    plot,
    plot_histograms,
    safe_name,
    save_pairs,
    t_label,
    table,
)

__all__ = [
    "CSV_COLUMNS", "INTERVAL", "KEY_COLUMNS", "MODES", "Cell", "MeasurementChain", "ModelSpec", "Report", "Settings",
    "add_paired_differences", "ancestral_chain", "chain_sigmas", "check_t", "companion_path", "cost_summary",
    "ddpm_mean_chain", "ddpm_mean_step", "default_variance", "eps_norm_text", "eps_norms", "error_moments",
    "feature_stats", "l1_per_image", "measure", "measured_rows", "measurement_chain", "nu_summary", "nu_text",
    "pair_image", "paired_difference", "per_image_path", "plan", "plot", "plot_histograms", "predict_x0",
    "prediction_error", "reference_alpha_bar", "results_csv", "run", "safe_name", "sampling_eps_norms", "save_pairs",
    "shapiro_rejections", "suggested_eps_scaler", "summarize", "t_label", "table",
]
