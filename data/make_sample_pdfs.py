"""Generate the sample PDF files in data/corpus/reports/.

The PDFs are part of the sample corpus used by the tests and the quickstart.
Each PDF page is its own document for the loader (ids like
``reports/weekend-projects-handbook.pdf#page=2``), so every page of a
multi-page file covers a different sub-topic and starts with its own heading.

Only the core Helvetica font and plain ASCII text are used, so the text
extracts cleanly with pypdf.

Usage (from the repository root):

    .venv/bin/pip install fpdf2      # once
    .venv/bin/python data/make_sample_pdfs.py

The script checks that every page fits on one sheet and that pypdf (if
installed) can extract the text of each page.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from fpdf import FPDF

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "data" / "corpus" / "reports"

# A fixed creation date keeps the output byte-for-byte reproducible.
FIXED_DATE = "2024-01-01T00:00:00+00:00"

# Each PDF: file name, document title, list of pages.
# Each page: (heading, [paragraphs]).
PDFS: list[tuple[str, str, list[tuple[str, list[str]]]]] = [
    (
        "weekend-projects-handbook.pdf",
        "Weekend Projects Handbook",
        [
            (
                "Knitting Basics: Your First Scarf",
                [
                    "Knitting needs only two needles and a ball of yarn. For a first "
                    "project, choose a smooth, light-coloured worsted weight yarn and "
                    "a pair of 5 mm (US size 8) needles. Light colours make it easier "
                    "to see each stitch, and smooth wool or acrylic is more forgiving "
                    "than fluffy or slippery yarn.",
                    "Start by casting on, which puts the first row of loops onto a "
                    "needle. The long-tail cast on is a good general method. Then learn "
                    "the two basic stitches. The knit stitch is made by inserting the "
                    "right needle from front to back through a loop, wrapping the yarn "
                    "around it and pulling a new loop through. The purl stitch is its "
                    "mirror image, worked from back to front with the yarn held in "
                    "front.",
                    "If you knit every row, you get garter stitch: a bumpy, stretchy "
                    "fabric that lies flat and looks the same on both sides, ideal for "
                    "a scarf. If you alternate a row of knit with a row of purl, you get "
                    "stockinette stitch, smooth V shapes on one side and bumps on the "
                    "other. Stockinette curls at the edges, so it is usually framed with "
                    "a garter border.",
                    "Before a sized project such as a sweater, knit a small gauge "
                    "swatch and count how many stitches fit in 10 cm. If you have more "
                    "stitches than the pattern asks for, switch to larger needles; if "
                    "fewer, use smaller ones. When the piece is long enough, bind off "
                    "by lifting each stitch over the next, then weave the loose yarn "
                    "ends into the back of the work with a blunt needle. A dropped "
                    "stitch can be picked back up with a small crochet hook.",
                ],
            ),
            (
                "Cheese Making at Home",
                [
                    "All cheese starts with the same steps: milk is soured, curdled, "
                    "and separated into solid curds and liquid whey. Fresh cow's or "
                    "goat's milk works well. Pasteurised milk is fine, but avoid "
                    "ultra-high-temperature (UHT) milk, because the intense heat "
                    "damages the proteins and the curd will not set firmly.",
                    "First the milk is warmed and a starter culture of lactic acid "
                    "bacteria is added. Mesophilic cultures work at moderate "
                    "temperatures and are used for cheddar and gouda; thermophilic "
                    "cultures tolerate more heat and are used for Swiss and Italian "
                    "styles such as parmesan and mozzarella. The bacteria turn milk "
                    "sugar into lactic acid, which flavours the cheese and helps it "
                    "keep.",
                    "Next comes rennet, an enzyme that makes the milk protein casein "
                    "join into a soft gel. When the gel gives a clean break, the curd "
                    "is cut into cubes. Smaller cubes release more whey and make a "
                    "harder, drier cheese. The curds are stirred and gently heated, "
                    "drained, salted, and pressed into a mould.",
                    "Hard cheeses are then aged, ideally at about 10 to 13 degrees C "
                    "with high humidity of around 80 to 85 percent, for weeks to years. "
                    "The simplest cheese for beginners needs no rennet at all: heat "
                    "milk to about 85 degrees C, stir in lemon juice or vinegar, and "
                    "strain the curds through cloth to make paneer or a fresh "
                    "ricotta-style cheese. Keep all equipment very clean, because "
                    "unwanted microbes grow in milk as happily as the good ones.",
                ],
            ),
            (
                "Fermenting Kimchi",
                [
                    "Kimchi is the Korean tradition of fermented, seasoned vegetables. "
                    "The best-known kind is made from napa cabbage. The cabbage is cut, "
                    "salted and left for one and a half to several hours, turning it "
                    "every so often, until the leaves bend without snapping. It is then "
                    "rinsed well and drained. Salting draws out water and makes it hard "
                    "for spoilage microbes to grow.",
                    "The seasoning paste usually contains gochugaru (Korean red pepper "
                    "flakes), garlic, ginger, fish sauce or salted shrimp, a little "
                    "sugar, and spring onions. Many cooks thicken it with a glue made "
                    "from rice flour and add strips of Korean radish. Wear gloves when "
                    "rubbing the paste between the cabbage leaves.",
                    "Pack the kimchi tightly into a clean jar, pressing it down so the "
                    "vegetables are covered by their own juices, and leave some space "
                    "at the top. The fermentation is done by lactic acid bacteria that "
                    "are naturally present on the vegetables. They produce lactic acid, "
                    "which gives the sour taste and preserves the food, and carbon "
                    "dioxide, which can make the jar bubble over.",
                    "Leave the jar at room temperature for one to two days, until it "
                    "smells pleasantly sour and tiny bubbles appear, then move it to the "
                    "fridge, where it keeps fermenting slowly for weeks. Young kimchi "
                    "is crisp and fresh; older, very sour kimchi is best cooked in "
                    "kimchi stew or kimchi fried rice.",
                ],
            ),
        ],
    ),
    (
        "solar-panel-sizing.pdf",
        "Sizing a Home Solar Panel System",
        [
            (
                "Sizing a Home Solar Panel System",
                [
                    "To size a rooftop solar system, start with how much electricity "
                    "you use. Add up the kilowatt-hours (kWh) on a year of electricity "
                    "bills and divide by 365 to get your average daily use. A household "
                    "using 10,950 kWh a year uses about 30 kWh a day.",
                    "Next, find the peak sun hours for your location: the number of "
                    "hours per day that would deliver the same energy if the sun shone "
                    "at full strength (1,000 watts per square metre). Many populated "
                    "regions get 3 to 6 peak sun hours on average. Solar maps and "
                    "calculators from national energy agencies give local figures.",
                    "Real systems lose energy to heat, wiring, dust, shading and the "
                    "inverter, so apply a derating factor of about 0.75 to 0.8. The "
                    "formula is: system size in kW = daily kWh / (peak sun hours x "
                    "derating factor). For 30 kWh a day, 4.5 peak sun hours and a factor "
                    "of 0.8, that is 30 / (4.5 x 0.8) = 8.3 kW. With 400-watt panels, "
                    "you would need about 8,300 / 400 = 21 panels.",
                    "Orientation matters. In the northern hemisphere, panels facing "
                    "south produce the most energy; east- or west-facing roofs produce "
                    "somewhat less. A tilt close to your latitude maximises yearly "
                    "output. Even partial shade from a chimney or tree can cut a "
                    "string's output sharply, which microinverters or power optimisers "
                    "can reduce.",
                    "For off-grid systems, size the battery for the days of autonomy "
                    "you want, that is how many cloudy days it must cover. Account for "
                    "depth of discharge: lithium iron phosphate batteries can be used "
                    "down to about 80 to 90 percent of their capacity, but lead-acid "
                    "batteries last much longer if kept above 50 percent.",
                ],
            ),
        ],
    ),
    (
        "aquarium-nitrogen-cycle.pdf",
        "The Aquarium Nitrogen Cycle",
        [
            (
                "The Aquarium Nitrogen Cycle",
                [
                    "Fish produce ammonia through their gills and waste, and uneaten "
                    "food and dead plant matter release more as they rot. Ammonia is "
                    "highly toxic to fish even at low levels. In a healthy aquarium, "
                    "bacteria living in the filter and gravel remove it in two steps. "
                    "This process is called the nitrogen cycle.",
                    "In the first step, ammonia-oxidising bacteria convert ammonia into "
                    "nitrite. Nitrite is also toxic: it stops the blood from carrying "
                    "oxygen. In the second step, nitrite-oxidising bacteria convert "
                    "nitrite into nitrate, which is far less harmful. Nitrate builds up "
                    "slowly and is removed by regular partial water changes and taken "
                    "up by live plants.",
                    "A brand-new tank has none of these bacteria, which is why fish "
                    "added to it often sicken or die, a problem known as new tank "
                    "syndrome. The fix is to cycle the tank before adding fish. In "
                    "fishless cycling you add pure ammonia to about 2 ppm and test the "
                    "water every few days with a liquid test kit. First ammonia falls "
                    "and nitrite rises, then nitrite falls and nitrate appears. The "
                    "cycle is complete when the tank can turn 2 ppm of ammonia into "
                    "zero ammonia and zero nitrite within 24 hours. This usually takes "
                    "four to eight weeks.",
                    "Protect the bacteria once you have them. Rinse filter sponges in "
                    "a bucket of old tank water, never under the tap, because chlorine "
                    "and chloramine in tap water kill the colony. Do not replace all "
                    "the filter media at once. Always treat new tap water with a "
                    "dechlorinator. Change about 20 to 25 percent of the water each "
                    "week, keep nitrate below about 40 ppm, and add fish a few at a "
                    "time so the bacteria can keep up.",
                ],
            ),
        ],
    ),
]


def build_pdf(path: Path, title: str, pages: list[tuple[str, list[str]]]) -> None:
    pdf = FPDF(format="A4", unit="mm")
    pdf.set_title(title)
    pdf.set_author("rag-pipeline team")
    pdf.set_subject("Sample corpus for rag-pipeline tests and quickstart")
    pdf.set_creator("data/make_sample_pdfs.py")
    pdf.set_creation_date(datetime.fromisoformat(FIXED_DATE))
    pdf.set_margins(20, 20, 20)
    # Each page must fit on one sheet; we check that below instead of
    # letting text silently flow onto an extra page.
    pdf.set_auto_page_break(False)
    for heading, paragraphs in pages:
        pdf.add_page()
        pdf.set_font("Helvetica", style="B", size=16)
        pdf.multi_cell(0, 9, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(3)
        pdf.set_font("Helvetica", size=11)
        for para in paragraphs:
            pdf.multi_cell(0, 5.5, para, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(3)
        if pdf.get_y() > pdf.h - 15:
            raise SystemExit(f"{path.name}: page '{heading}' overflows the sheet")
    pdf.output(str(path))


def check_pdf(path: Path, pages: list[tuple[str, list[str]]]) -> None:
    try:
        from pypdf import PdfReader
    except ImportError:
        print(f"  (pypdf not installed; skipped text check for {path.name})")
        return
    reader = PdfReader(str(path))
    if len(reader.pages) != len(pages):
        raise SystemExit(f"{path.name}: expected {len(pages)} pages, got {len(reader.pages)}")
    for i, (page, (heading, paragraphs)) in enumerate(zip(reader.pages, pages), start=1):
        text = " ".join((page.extract_text() or "").split())
        # The heading and the first few words of each paragraph must come out intact.
        probes = [heading] + [" ".join(p.split()[:6]) for p in paragraphs]
        missing = [p for p in probes if p not in text]
        if missing:
            raise SystemExit(f"{path.name} page {i}: text not extracted cleanly: {missing}")
        print(f"  page {i}: {len(text.split())} words OK ({heading})")


def main() -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, title, pages in PDFS:
        for heading, paragraphs in pages:
            for text in [heading, *paragraphs]:
                if not text.isascii():
                    raise SystemExit(f"{name}: non-ASCII text in '{heading}'")
        path = OUT_DIR / name
        build_pdf(path, title, pages)
        print(f"wrote {path.relative_to(REPO_ROOT)} ({len(pages)} page(s))")
        check_pdf(path, pages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
