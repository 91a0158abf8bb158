"""The out-of-distribution photos: which installed file, what it shows, its licence.

Chosen by looking at each file: no ants, bees, cats or dogs. Every row is a distinct
photo; ``category`` stratifies the selection/report split (src/abcd/oodset/assemble.py). Left out on
purpose: skimage chelsea (a cat), OpenCV chicky_512 (a dog, despite the name) and Lomiri's
friends (two dogs); second views of one scene (skimage motorcycle_right, OpenCV aero3,
aloeR, basketball2, box, ela_modified, graf3, leuvenB, rubberwhale2, the stereo/chessboard
pairs); drawings, renders and synthetic images (skimage horse, logos, phantom, colour
wheel; OpenCV Blender_Suzanne, cards, pic*, smarties, the anime face, the map, starry_night;
the abstract Lomiri and UKUI wallpapers).

A second batch (``batch=2``), added after the first batch's report half had been read, takes
every photo of four more packages: MATE's nature wallpapers, LXQt's photo wallpapers, libvips'
documentation (an owl) and ImageMagick's (bluebells, one photo shown four ways: one row), and
scikit-image's microaneurysms. Left out there: MATE's Elephants (a painting) and its abstract
and logo wallpapers, LXQt's logos, origami, triangles, waves and plasma_arch (a logo on a
texture), libvips' tn_owl (a thumbnail of the owl), ImageMagick's drawings, screenshots and
rose.jpg (a 70 x 46 px thumbnail, below MIN_SIDE). Not taken: GIMP's data (its one photo is a
kitten; the rest textures), GNOME 43's backgrounds (renders), darktable and Hugin (a large
program for one photo; 100-250 px projection demos of one scene), Plasma's wallpapers (94 MB).
The batches are split separately (src/abcd/oodset/assemble.py), so no first-batch photo changes half.
"""

# ruff: noqa: E501  (the photo table: one row per line reads better than wrapped tuples)

from __future__ import annotations

from dataclasses import dataclass

PIP, DEB = "pip", "deb"
# Debian packages that ship photos: installed by `make system-deps` (docs/data.md), which CI runs.
DEB_PACKAGES = (
    "opencv-doc",
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
    "mate-backgrounds",
    "lxqt-themes",
    "libvips-doc",
    "imagemagick-6-doc",
)
_CV = "/usr/share/doc/opencv-doc/examples/"
_BG = "/usr/share/backgrounds/"
_CV_LICENCE = "OpenCV samples, Apache-2.0 / BSD-3-Clause (Debian copyright)"
_LXQT = "/usr/share/lxqt/wallpapers/"
_LXQT_LICENCE = "LGPL-2.1+, LXQt team (Debian copyright: wallpapers under Files: *)"
# A photo's shorter side must be at least this many pixels (ImageMagick's 70 x 46 rose is not).
MIN_SIDE = 96


@dataclass(frozen=True)
class OodPhoto:
    name: str
    package: str  # pip: the importable module that ships the file; deb: the Debian package
    relpath: str  # pip: inside that module's directory; deb: the installed absolute path
    content: str
    licence: str
    source: str = PIP  # PIP | DEB
    category: str = "object"  # people | food | animal | object | scene | nature | texture | science
    batch: int = 1  # 1: the first 65 photos; 2: added after batch 1's report half was read (split apart)


def _cv(name: str, rel: str, category: str, content: str) -> OodPhoto:
    return OodPhoto(name, "opencv-doc", _CV + rel, content, _CV_LICENCE, DEB, category)


def _bg(name: str, package: str, file: str, category: str, content: str, licence: str) -> OodPhoto:
    return OodPhoto(name, package, _BG + file, content, licence, DEB, category)


def _mate(name: str, file: str, category: str, content: str, author: str) -> OodPhoto:
    path = _BG + "mate/nature/" + file
    return OodPhoto(name, "mate-backgrounds", path, content, f"GPL-2+, {author}", DEB, category, batch=2)


def _lxqt(name: str, file: str, category: str, content: str) -> OodPhoto:
    return OodPhoto(name, "lxqt-themes", _LXQT + file, content, _LXQT_LICENCE, DEB, category, batch=2)


_L16, _L20 = "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04"

# fmt: off
PHOTOS: tuple[OodPhoto, ...] = (
    OodPhoto("astronaut", "skimage", "data/astronaut.png", "astronaut Eileen Collins, portrait", "NASA, public domain", PIP, "people"),
    OodPhoto("brick", "skimage", "data/brick.png", "brick wall texture (grey)", "CC0 (cc0textures)", PIP, "texture"),
    OodPhoto("camera", "skimage", "data/camera.png", "man with a camera on a tripod (grey)", "CC0, Lav Varshney", PIP, "people"),
    OodPhoto("cell", "skimage", "data/cell.png", "phase image of a cell (grey)", "CC0 (scikit-image)", PIP, "science"),
    OodPhoto("clock_motion", "skimage", "data/clock_motion.png", "motion-blurred wall clock (grey)", "public domain", PIP, "object"),
    OodPhoto("coffee", "skimage", "data/coffee.png", "cup of coffee on a saucer", "CC0, Rachel Michetti", PIP, "food"),
    OodPhoto("coins", "skimage", "data/coins.png", "old coins on a dark background (grey)", "Brooklyn Museum, no known restrictions", PIP, "object"),
    OodPhoto("grass", "skimage", "data/grass.png", "grass texture (grey)", "CC0 (DeviantArt linolafett)", PIP, "texture"),
    OodPhoto("gravel", "skimage", "data/gravel.png", "gravel texture (grey)", "CC0 (cc0textures)", PIP, "texture"),
    OodPhoto("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg", "galaxies, Hubble deep field", "NASA, public domain", PIP, "science"),
    OodPhoto("ihc", "skimage", "data/ihc.png", "stained tissue under a microscope", "scikit-image (CC0)", PIP, "science"),
    OodPhoto("moon", "skimage", "data/moon.png", "surface of the moon (grey)", "scikit-image, no known restrictions", PIP, "science"),
    OodPhoto("motorcycle", "skimage", "data/motorcycle_left.png", "red motorcycle in a workshop", "Middlebury stereo set", PIP, "object"),
    OodPhoto("page", "skimage", "data/page.png", "scanned printed page (grey)", "scikit-image, no known restrictions", PIP, "object"),
    OodPhoto("retina", "skimage", "data/retina.jpg", "fundus photograph of an eye", "CC0 (Wikimedia)", PIP, "science"),
    OodPhoto("rocket", "skimage", "data/rocket.jpg", "SpaceX rocket on the launch pad at night", "SpaceX, public domain", PIP, "scene"),
    OodPhoto("text", "skimage", "data/text.png", "handwritten text on a surface (grey)", "public domain (Wikipedia)", PIP, "object"),
    OodPhoto("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "portrait of Grace Hopper", "US Navy, public domain", PIP, "people"),
    OodPhoto("china", "sklearn", "datasets/images/china.jpg", "Chinese temple and trees", "CC BY 2.0, danielbuechele (Flickr)", PIP, "scene"),
    OodPhoto("flower", "sklearn", "datasets/images/flower.jpg", "orange dahlia", "CC BY 2.0, vultilion (Flickr)", PIP, "nature"),
    _cv("aerial_town", "data/aero1.jpg", "scene", "aerial view of a town and a lake"),
    _cv("aloe", "data/aloeL.jpg", "nature", "aloe in a pot (left view of a stereo pair)"),
    _cv("apple", "data/apple.jpg", "food", "red apple, close-up"),
    _cv("baboon", "data/baboon.jpg", "animal", "mandrill's face"),
    _cv("basketball", "data/basketball1.png", "people", "two men with a basketball in an office (grey)"),
    _cv("circuit_board", "data/board.jpg", "object", "printed circuit board"),
    _cv("box_in_scene", "data/box_in_scene.png", "object", "biscuit boxes on a table (grey)"),
    _cv("building", "data/building.jpg", "scene", "hotel building and lawn"),
    _cv("swallowtail", "data/butterfly.jpg", "animal", "swallowtail butterfly on a leaf"),
    _cv("notebook", "data/ela_original.jpg", "object", "black notebook with an elastic band"),
    _cv("fruits", "data/fruits.jpg", "food", "halved oranges, limes, kiwi and cabbage"),
    _cv("graffiti", "data/graf1.png", "scene", "graffiti on a wall"),
    _cv("palace", "data/home.jpg", "scene", "palace against a blue sky, birds far away"),
    _cv("leuven", "data/leuvenA.jpg", "scene", "brick houses on a cobbled street"),
    _cv("car", "data/licenseplate_motion.jpg", "object", "rear of a car, motion-blurred"),
    _cv("houseplant", "alphamat/input_images/plant.jpg", "nature", "potted plant on a shelf"),
    _cv("books", "data/left.jpg", "object", "two books on a floor"),
    _cv("footballer", "data/messi5.jpg", "people", "footballer kicking a ball, crowd"),
    _cv("orange", "data/orange.jpg", "food", "orange, close-up"),
    _cv("toys", "data/rubberwhale1.png", "object", "toys, shells and fabrics (Middlebury flow scene)"),
    _cv("squirrel", "data/squirrel_cls.jpg", "animal", "red squirrel on a branch"),
    _cv("desk_items", "data/stuff.jpg", "object", "pen, lighter, coin and caps on a table"),
    _cv("robin", "hfs/data/000.jpg", "animal", "robin on a post"),
    _cv("tree", "hfs/data/002.jpg", "nature", "lone tree in a meadow"),
    _cv("brick_house", "reg/home.png", "scene", "brick house with a chimney"),
    _cv("monarch", "dnn_superres/butterfly.png", "animal", "monarch butterfly's wing, close-up"),
    _cv("parking_sign", "text/scenetext01.jpg", "scene", "no-parking sign on a street, passers-by"),
    _cv("sports_sign", "text/scenetext02.jpg", "scene", "sports centre direction sign"),
    _cv("copy_centre", "text/scenetext03.jpg", "scene", "copy shop under an arcade"),
    _cv("generator", "text/scenetext04.jpg", "object", "generator container by a wall, palm trees"),
    _cv("barrier", "text/scenetext05.jpg", "object", "no-parking barrier on a pavement"),
    _cv("shop_front", "text/scenetext06.jpg", "scene", "shop front and houses"),
    _bg("bridge", _L16, "Bridge_by_Sander_Klootwijk.jpg", "scene", "bridge cables over a beach", "CC BY-SA 4.0, Sander Klootwijk"),
    _bg("dragonfly", _L16, "Dragonfly_by_Bolly.jpg", "animal", "dragonfly on a twig, hazel leaves", "CC BY-SA 4.0, Bolly"),
    _bg("fig", _L16, "Picture_0B_by_freespace.jpg", "food", "halved fig in a red bowl", "CC BY 4.0, Trevor Freespace"),
    _bg("brushes", _L16, "Picture_1A_by_freespace.jpg", "object", "paint brushes", "CC BY 4.0, Trevor Freespace"),
    _bg("drum_room", _L16, "Wine_by_Jakkub_Mede.jpg", "object", "hand drum, table, wine bottle, loudspeaker", "CC BY 4.0, Jakub Mede"),
    _bg("aitzgorri", _L16, "aitzgorri_by_Aitzol_Berasategi.jpg", "scene", "autumn meadow below mountains", "CC BY 4.0, Aitzol Berasategi"),
    _bg("lamp_bird", _L16, "free_by_Peter_Nerlich.jpg", "object", "wooden toy bird under hanging lamps", "CC BY-SA 4.0, Peter Nerlich"),
    _bg("wall_clock", _L16, "greentock_by_Peter_Nerlich.jpg", "object", "wall clock, close-up", "CC BY-SA 4.0, Peter Nerlich"),
    _bg("stream", _L16, "life_by_Aitzol_Berasategi.jpg", "nature", "woodland stream over rocks", "CC BY 4.0, Aitzol Berasategi"),
    _bg("picos", _L16, "picosdeeuropa_by_Aitzol_Berasategi.jpg", "scene", "mountains and a path, Picos de Europa", "CC BY 4.0, Aitzol Berasategi"),
    _bg("dandelions", _L16, "seeding_by_Clements_Engelhardt.jpg", "nature", "dandelion clocks in a meadow", "CC0 1.0, Clemens Engelhardt"),
    _bg("sunset", _L16, "sunset_by_Aitzol_Berasategi.jpg", "scene", "sunset over hills", "CC BY 4.0, Aitzol Berasategi"),
    _bg("nuthatch", _L20, "Kleiber_by_Lukas_Baubkus.jpg", "animal", "nuthatch on a tree trunk", "CC BY-SA 3.0, Lukas Baubkus"),
    # Batch 2.
    OodPhoto("microaneurysms", "skimage", "data/microaneurysms.png", "retinal fundus detail with microaneurysms (grey, 102 px)", "CC0, Andreas Maier (FAU fundus images)", PIP, "science", batch=2),
    _mate("water_drop", "Aqua.jpg", "nature", "drop splashing into water", "Charles Barbin"),
    _mate("leaf_veins", "Blinds.jpg", "nature", "backlit green leaf, close-up", "Lennart Poettering, Andrea Cimitan"),
    _mate("dune", "Dune.jpg", "scene", "dune grass above the sea", "Marco Cogoni, Hylke Bons"),
    _mate("gerbera", "FreshFlower.jpg", "nature", "orange gerbera, close-up", "Jens Ansorg"),
    _mate("marigold", "Garden.jpg", "nature", "red and yellow marigold", "Charles Barbin"),
    _mate("meadow_grass", "GreenMeadow.jpg", "nature", "young grass blades, close-up", "Timothy Schellhase, Lapo Calamandrei"),
    _mate("ladybird", "LadyBird.jpg", "animal", "ladybird on a stem among forget-me-nots", "Charles Barbin"),
    _mate("raindrops", "RainDrops.jpg", "nature", "raindrops on leaves", "blackcombwhistler07"),
    _mate("storm", "Storm.jpg", "scene", "storm clouds over a road, motion blur", "Sergey Nazarov"),
    _mate("dandelion_seeds", "TwoWings.jpg", "nature", "two dandelion seeds before orange flowers", "Charles Barbin, Hylke Bons"),
    _mate("planks", "Wood.jpg", "texture", "pale wooden planks", "Jean-François Fortin Tam"),
    _mate("yellow_flower", "YellowFlower.jpg", "nature", "yellow daisy-like flower, close-up", "Charles Barbin"),
    _lxqt("fritillary", "Butterfly-Kenneth-Wimer.jpg", "animal", "fritillary butterfly on a seed head (Kenneth Wimer)"),
    _lxqt("valendas", "Valendas.png", "scene", "mountains under clouds, Valendas"),
    _lxqt("after_rain", "after-the-rain.jpg", "scene", "sunset clouds over a dark ridge"),
    _lxqt("apple_blossom", "appleflower.png", "nature", "apple blossom buds on a twig"),
    _lxqt("scarce_swallowtail", "butterfly.png", "animal", "scarce swallowtail on a scabious flower"),
    _lxqt("clouds", "cloud.png", "scene", "cloud-dotted sky"),
    _lxqt("dew_drop", "drop.png", "nature", "drop on a bent grass blade"),
    _lxqt("anemones", "flowers.png", "nature", "anemones in a meadow"),
    _lxqt("fog", "fog.jpg", "scene", "fog over a ploughed field"),
    _lxqt("green_hills", "this-is-not-windows.jpg", "scene", "green hills, blue sky, a row of trees"),
    _lxqt("sunbeam", "beam.png", "scene", "sunbeams through clouds over wooded hills"),
    OodPhoto("owl", "libvips-doc", "/usr/share/gtk-doc/html/libvips/owl.jpg", "saw-whet owl on a mossy stump", "LGPL-2.1, libvips (Debian copyright)", DEB, "animal", batch=2),
    OodPhoto("bluebells", "imagemagick-6-doc", "/usr/share/doc/imagemagick-6-common/html/images/bluebells_lin.jpg", "bluebells, close-up", "ImageMagick licence (Debian copyright)", DEB, "nature", batch=2),
)
# fmt: on
