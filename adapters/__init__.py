"""Network families wrapped into samplerkit's denoiser contract, one module each.

* :mod:`samplerkit.adapters.analytic` -- exact denoisers with known answers (test beds, no download)
* :mod:`samplerkit.adapters.adm`      -- guided-diffusion ADM UNet (also the DDPM-IP release)
* :mod:`samplerkit.adapters.iddpm`    -- improved-diffusion UNet
* :mod:`samplerkit.adapters.edm`      -- NVlabs EDM network pickles, loaded without running pickled code
* :mod:`samplerkit.adapters.dit`      -- DiT and SiT latent transformers (facebookresearch/DiT, willisma/SiT)
"""
