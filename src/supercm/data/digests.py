"""The SHA-256 digests recorded for the generated digit domains (:mod:`supercm.data.domains`,
:mod:`supercm.data.mnistm_pool`): of their
inputs (mnist10k's bytes, the photos, optdigits, every font file) and of every array they generate, and
:func:`check_digests`, which refuses (or, with ``SUPERCM_ALLOW_DATA_MISMATCH=1``, warns about) a difference."""

from __future__ import annotations

import os
import warnings

from .base import FetchError

ALLOW_MISMATCH_ENV = "SUPERCM_ALLOW_DATA_MISMATCH"

#: SHA-256 of the inputs (``inputs``) and of every generated array (C order), per dataset.
EXPECTED_SHA256: dict[str, dict[str, dict[str, str]]] = {
    "mnistm_style": {
        "inputs": {
            "mnist10k_images": "0768d16c5adea568dee18fa5e4e1acb117e9ec2c5d6b1dffe5fc29c1e61c1eca",
            "photo0": "e701459344fd69797154c91add3bb5d70e5ed1a61d8bed889bab3a796104698d",
            "photo1": "3202904ed246795bf616c66d7859cd7c6080eff736c6e38dc5cc62779742033f",
        },
        "arrays": {
            "source_index": "bd92fb3a7bfeec3aa755fbe74c8981a7ae218987dcf4b560c3917bde0f693937",
            "test_crops": "37576aff48b7e499a2417dccc44cddad9c5324be013421c486bf0107f5bc5d30",
            "test_images": "f5d316ecf05bdf0017ad651d1b3a8c3a1df90f0744fb6a936644cf915f29fd05",
            "test_index": "bb184d4164286eabcaa98679387abc6775c8456c9a29e53853e6669289b0e169",
            "test_labels": "1e5bdbaab32a4634dd85bb28ecf928e37e756c2dbfe61128763053ca0b78261a",
            "train_crops": "40bafe6b7bc2177302616b21e02fd574319737e82e717171a325c12f29780d02",
            "train_images": "1d59d7b9d77cbc53248be71ed5e981eda9bdb97fb67bc9f03fd502c4c08c2e32",
            "train_index": "5463be86bd6192ceda135d58700bfdec64d70480d81a38169208cbed13c1a593",
            "train_labels": "fbffeb4887dbee72f6dd431a57708c98f395048e3c6f3925661416a58ea326d9",
        },
    },
    # mnistm_pool (supercm.data.mnistm_pool): photo0-1 scikit-learn's, photo2-6 scikit-image 0.26.0's.
    "mnistm_pool": {
        "inputs": {
            "mnist10k_images": "0768d16c5adea568dee18fa5e4e1acb117e9ec2c5d6b1dffe5fc29c1e61c1eca",
            "photo0": "e701459344fd69797154c91add3bb5d70e5ed1a61d8bed889bab3a796104698d",
            "photo1": "3202904ed246795bf616c66d7859cd7c6080eff736c6e38dc5cc62779742033f",
            "photo2": "a8c429c18afa7b0fd5673e598d73a21225d94c864a71bbb3885126fdecb41071",
            "photo3": "416b729128bfb2c3d1eb69bf9b1734a796293abc17939267b2dc94f8a5784031",
            "photo4": "0ce2b51640b9c95f19617f03eabf40c3f0368589cc1ee1190b70966165ac184f",
            "photo5": "3d4435cc745752b7f9724df88c6e18817de3ce7e3d2d71c55f85f7831e68f197",
            "photo6": "c5b3ef509a92f16d4c29be8cf0300fe75d53e13a3ce650159db932caea8dcc1b",
        },
        "arrays": {
            "source_index": "bd92fb3a7bfeec3aa755fbe74c8981a7ae218987dcf4b560c3917bde0f693937",
            "test_crops": "992c53fb83ab792ab4c2a7782d181c6ff80a6450bda8fe6dedd8eea2690d41eb",
            "test_images": "fbd6c62d7983636638294275f6e40258816cd162e5c663941ba5692771a725e7",
            "test_index": "bb184d4164286eabcaa98679387abc6775c8456c9a29e53853e6669289b0e169",
            "test_labels": "1e5bdbaab32a4634dd85bb28ecf928e37e756c2dbfe61128763053ca0b78261a",
            "train_crops": "467657d736ee00bec79f40ec981a74f74b73dac2c45eefb7450b5a171bef541a",
            "train_images": "d0493821ab68b7e120c83ee851d28d8c8591b50e352dfb45c6bf0e2ec8778b01",
            "train_index": "5463be86bd6192ceda135d58700bfdec64d70480d81a38169208cbed13c1a593",
            "train_labels": "fbffeb4887dbee72f6dd431a57708c98f395048e3c6f3925661416a58ea326d9",
        },
    },
    "optdigits": {
        "inputs": {
            "images": "20def7f70a702f0af9732fbba4375e147a7d54fe70d8c45569b8e7c1c7010c10",
            "labels": "a3c91c262eddcf7ba8f0e37507c30284493c9b20412ffe4af30d536401f7ba21",
        },
        "arrays": {
            "test_images": "7bc14b51b1d09b0c56676cde4d7b097d16aca25b8baafc4cf01d9330769e3034",
            "test_labels": "0e9a3ed17a67d0c5a299f2ea3616e084a80d4a70c21d2342cd8372a3609db149",
            "train_images": "6fc52e696879aea356ffbf124eb916b2e3302bda535b215877c5601fabcb938c",
            "train_labels": "c11be343c8bb13c9c2cc7451a1cbfab004a56f51de1f250814a7457973f4f00a",
        },
    },
    "synth_digits": {
        "inputs": {
            "dejavu/DejaVuMathTeXGyre.ttf": "f9111561cce123a3b7bdbc230c671b4152265dd1ca6179bc8fac242a6dad0df1",
            "dejavu/DejaVuSans-Bold.ttf": "0d977336a6d5fba34eab8e3199eb218327161b5143749f802982c2bc34df0c96",
            "dejavu/DejaVuSans-BoldOblique.ttf": "b7479266f14d71a019f79cb0ccc23acb6b130483317f7fff16182a0784031c9b",
            "dejavu/DejaVuSans-ExtraLight.ttf": "af1ca215bce59dade18223e4591340f2a07d2e193a87356cd216fcc09da70f02",
            "dejavu/DejaVuSans-Oblique.ttf": "eef1a593cc0a4654f147fd1aa9a11e7d327eb8be6f3a35099182db6aeb5d28fe",
            "dejavu/DejaVuSans.ttf": "abdc775b21b1bc470d50c97e790d276f2054b7504e56e5bd3e64f48d68582322",
            "dejavu/DejaVuSansCondensed-Bold.ttf": "6d2f2481e2aae944e8411cc5be515c69503ff7f5db52f2c67bcbe5d4de6bec13",
            "dejavu/DejaVuSansCondensed-BoldOblique.ttf": "a0c1e726e901341f5b0a0ecae0696fef44de9a004768ba71d69909938caa1421",
            "dejavu/DejaVuSansCondensed-Oblique.ttf": "e35007c431fa7d6c8c8b1aeac60bd68ac14869bb7ed70959c6f027e4cdfa8d35",
            "dejavu/DejaVuSansCondensed.ttf": "2d8aa290adcf1ebcbb35f63e57cf32941b012eaab4b65096b904112cf3bac972",
            "dejavu/DejaVuSansMono-Bold.ttf": "2964f6dac8e6e9d71613928340f17bf868e9ea51692cca333c79e74962f02233",
            "dejavu/DejaVuSansMono-BoldOblique.ttf": "97a099e700f0e0a4f0078c04a970686595c9a6049b5a1defbd22362e20ae1fcf",
            "dejavu/DejaVuSansMono-Oblique.ttf": "db15e83c273e57cd52731c10ebb5b6bbcb0b3e9e5860dec33a66b60a5294f2df",
            "dejavu/DejaVuSansMono.ttf": "0f5db4f1749979d961019838b160bec74abdf7f9eca69553fe1aa856bbff49a4",
            "dejavu/DejaVuSerif-Bold.ttf": "e2fd85eba2de65ac270d1cdb1685e252eb827f600850cf62af2d20c41b22e945",
            "dejavu/DejaVuSerif-BoldItalic.ttf": "c84b722b8da77cb96873a801c9ad1bc3b75d0c847c718696898878f33186c657",
            "dejavu/DejaVuSerif-Italic.ttf": "889a2b9daff9f091f7cf1ff6c88e5c1a5b55b3afb221571393ccb71ec9301ec9",
            "dejavu/DejaVuSerif.ttf": "13e61509f5c81d7c3132810f4f903e3523df89c802bf6e0674621e8f659cdfe1",
            "dejavu/DejaVuSerifCondensed-Bold.ttf": "9432825f095d7bdc4fb445d60b7a91f326e212d041f88cf0c651801f6b7f5668",
            "dejavu/DejaVuSerifCondensed-BoldItalic.ttf": "66b389de31f2a2f64110b9a5da006e3a3e903ead43a3fdbaa91c130ded9d1a8c",
            "dejavu/DejaVuSerifCondensed-Italic.ttf": "c1670c8a103e28767d44c94203a15975bee1cf04c40caffd4a5349b90a779cd0",
            "dejavu/DejaVuSerifCondensed.ttf": "1b3f7840572a81733df8f7a82176d61c19b43c2b110e380bac7ee07e9ac6a66b",
            "freefont/FreeMono.ttf": "1175cc31865a2a1bf011a7711ddab98302343bd679181b360a0e845774c61ecf",
            "freefont/FreeMonoBold.ttf": "30b4b98748839431a366123f859871549b57e461a8b8ec2d3d65b55b2fb9f22d",
            "freefont/FreeMonoBoldOblique.ttf": "897560b2d1678baf96b5d4d3c5203f1bcf41df46fa4fc6dfbcf245ba84c1b130",
            "freefont/FreeMonoOblique.ttf": "e8d854cbb19b7f3b2d7cfc93c8ab31595de1b53f78bb81da595a700ae686e7e8",
            "freefont/FreeSans.ttf": "0b602f2825b30f9faa772c2ca25b1ce05b6255c9bf02dd8ca088ae51f9f737bb",
            "freefont/FreeSansBold.ttf": "e8b93173d6d8214fb74a068663d3721fdca612bbf3f98973dddb7067b131a0cf",
            "freefont/FreeSansBoldOblique.ttf": "69cdc7587112f2b2cf6f460da6ce2c19a983a80905a2863dafe7e5a92ad6e4af",
            "freefont/FreeSansOblique.ttf": "31050ee870617c8c098167dd3df78cde65392abc04ed96fd9304d0b1421a68a9",
            "freefont/FreeSerif.ttf": "12ee050384c99c97a6873708a3aebde3d795de8d8ed069b1a0e3274ab3e5be03",
            "freefont/FreeSerifBold.ttf": "12bd953ceb1fa8c7d7386c3d026bd3b004bf07640d8603cc803db7ceb7d9fb99",
            "freefont/FreeSerifBoldItalic.ttf": "86b1ef902639cbe98e442cdd3aa913e0478a072d79192a9b6e989fd35310de0f",
            "freefont/FreeSerifItalic.ttf": "3049ffb26ed8140c13e21d612d78e18ff3dc20123b85d1f7353a1564163a5e9b",
            "liberation/LiberationMono-Bold.ttf": "267ae0b63fc67980d11fc4cbb630de84d845c6bf350988ec56766baf98706b8b",
            "liberation/LiberationMono-BoldItalic.ttf": "c8f21356b3948b9ae2858b82a5514a8384c53847fde1f9ecd38cb6849582f864",
            "liberation/LiberationMono-Italic.ttf": "8d39f087bf0d103586624233981c048818e1d4bcb74e4c5ca96a34f6caed583d",
            "liberation/LiberationMono-Regular.ttf": "a2e642d350acb1c5e368f375db8a4ef5a2f4ff2b79056d8c3be8bd8a7e9fcb44",
            "liberation/LiberationSans-Bold.ttf": "361c61b82d575c5c35fd9157fda8b0194bcfcd0d88ea8521a4fb5dd53d33dddc",
            "liberation/LiberationSans-BoldItalic.ttf": "a224075ac17495ad0a3af3bc0a419ac0704a8b3fd1095456201fb9b095fc281d",
            "liberation/LiberationSans-Italic.ttf": "832b4406dbef23628800d3aaad21048534ac84d7e3ad955be83b8172ed8ef512",
            "liberation/LiberationSans-Regular.ttf": "f8ace1f892b2bd9dc1792ba7f097fa7588f84fed48321480e04de5390828221f",
            "liberation/LiberationSansNarrow-Bold.ttf": "f77fe6ca01c8b043b99743fad34954c53d625263c076aa844c5a5dbf568743ab",
            "liberation/LiberationSansNarrow-BoldItalic.ttf": "822ef9cfc11f1409f27611f8d128d67105da5ea616f4010b2ab9af76413bda7e",
            "liberation/LiberationSansNarrow-Italic.ttf": "a48c86c13c247fbcf3cdbe9bed3e5abcfa6e91a8f61f3ae190a5893885266e59",
            "liberation/LiberationSansNarrow-Regular.ttf": "ab9719545aeb24156c462601f92bf4897130beaac59ad79bea7da264bce69b19",
            "liberation/LiberationSerif-Bold.ttf": "af228b9de767e5162168e433351b3d0e086648219c6c12ed888fba0bda3694d5",
            "liberation/LiberationSerif-BoldItalic.ttf": "19c8cef87d61197323b0501d0f8676669489658f23417ca661de18d85755af06",
            "liberation/LiberationSerif-Italic.ttf": "ccd19036f8e8599e920345105df8d21eb27a66b700ac23968fb14d70259ddb1e",
            "liberation/LiberationSerif-Regular.ttf": "1c9c77c2cd0f3c2d2aeef53ea50a4d5d3d684ac73a431d7c70d7864887d194a3",
        },
        "arrays": {
            "test_fonts": "79c4cad76a33e2237740cf3f330a7c2f1ba270a753d2e91d285248a3f0feba04",
            "test_images": "24d965f60979e4d6118a391585b2ab8ec1c284dcedbe69abf0de17d8d7e2800b",
            "test_labels": "cf9a790c1dbcc744a3e2056afc4f7d276c8be2683c38355b50f039bba54212a7",
            "train_fonts": "ca3225a7ed8b1556784ebe23ed1280daec05b2bb91e11aa5487cf8614429dad0",
            "train_images": "52db9e30bc290ed7148e15bf6bf3ab9f45309678152343a0d85dca8de9f528a4",
            "train_labels": "81921691f56cf8b44832d6ec3bd4dba0b1eead07dcf608254eef6593ab0d913d",
        },
    },
}


def _allow_mismatch(allow: bool | None) -> bool:
    if allow is not None:
        return allow
    return os.environ.get(ALLOW_MISMATCH_ENV, "").strip().lower() in {"1", "true", "yes"}


def check_digests(
    name: str,
    kind: str,
    digests: dict[str, str],
    *,
    explain: str,
    allow_mismatch: bool | None = None,
    expected: dict[str, str] | None = None,
) -> list[str]:
    """Compare ``digests`` with the recorded ones; returns the differing keys (warns) or raises :class:`FetchError`.

    ``explain`` is appended to the message: what differs on this machine and why it matters.
    """
    expected = EXPECTED_SHA256[name][kind] if expected is None else expected
    bad = sorted(k for k in set(expected) | set(digests) if expected.get(k) != digests.get(k))
    if not bad:
        return []
    shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
    message = (
        f"{name}: the {kind} differ from the SHA-256 digests recorded in supercm.data.digests ({shown}). {explain}"
    )
    if _allow_mismatch(allow_mismatch):
        warnings.warn(message + f" Caching anyway because {ALLOW_MISMATCH_ENV} is set.", stacklevel=2)
        return bad
    raise FetchError(
        message + f"\nThe data would not be the bytes every other machine trains on. To build it anyway "
        f"(and record what differs in {name}/mismatch.json), set {ALLOW_MISMATCH_ENV}=1."
    )
