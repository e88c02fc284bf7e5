"""Network families wrapped into samplerkit's denoiser contract, one module each.

* :mod:`adapters.analytic` -- exact denoisers with known answers (test beds, no download)
* :mod:`adapters.adm`      -- guided-diffusion ADM UNet (also the DDPM-IP release)
* :mod:`adapters.iddpm`    -- improved-diffusion UNet
* :mod:`adapters.edm`      -- NVlabs EDM network pickles, loaded without running pickled code
"""
