"""Fixed English sentence sets for measuring a compressed sentence encoder.

Written for this library (no download): the *evaluation* set mixes paraphrase pairs (two
wordings of one meaning), unrelated sentences and lengths from a single word to long
paragraphs (3 to about 120 WordPiece tokens with [CLS] and [SEP]); the *calibration* set is
disjoint from it (no sentence in common) and of the same kinds, for choosing activation
ranges, Hessians and scales.  Keeping the two apart is what makes a fidelity number honest:
a method calibrated on the sentences it is scored on can overfit them.

``EVAL_PAIRS[i]`` are paraphrases of each other; :data:`EVAL_SENTENCES` is every pair's two
sentences followed by the single sentences.
"""

from __future__ import annotations

__all__ = ["EVAL_PAIRS", "EVAL_SINGLES", "EVAL_SENTENCES", "CALIBRATION_SENTENCES"]

EVAL_PAIRS = (
    ("A man is playing a guitar on the street.", "Someone strums a guitar outside on the sidewalk."),
    ("The cat is sleeping on the warm windowsill.", "A cat naps in the sun by the window."),
    ("How do I reset my password?", "What are the steps to change a forgotten password?"),
    ("The stock market fell sharply today.", "Share prices dropped a lot on the exchange this afternoon."),
    ("She finished the marathon in under four hours.",
     "Her marathon time was less than four hours."),
    ("The restaurant was closed for renovations.", "They shut the diner while it was being remodelled."),
    ("Children are building a sandcastle at the beach.", "Kids make a castle out of sand by the sea."),
    ("The meeting has been moved to Thursday.", "We rescheduled the meeting for Thursday."),
    ("Drink plenty of water when it is hot outside.", "Stay hydrated during hot weather."),
    ("The train was delayed because of snow on the tracks.",
     "Snow on the rails made the train late."),
    ("He could not find his keys anywhere.", "His keys were nowhere to be found."),
    ("The new phone has a much better camera.", "This latest smartphone takes far sharper photos."),
    ("Please turn off the lights when you leave.", "Switch the lights off on your way out, please."),
    ("The company hired twenty new engineers this year.",
     "Twenty engineers joined the firm over the past year."),
    ("A woman is slicing tomatoes in the kitchen.", "Someone cuts tomatoes on a kitchen counter."),
    ("Global temperatures have risen over the last century.",
     "The planet has warmed considerably in the past hundred years."),
    ("Where is the nearest pharmacy?", "Is there a drugstore close by?"),
    ("The movie was boring and far too long.", "The film dragged on and was dull."),
    ("Our flight to Lisbon leaves at seven in the morning, so we should be at the airport by five.",
     "We need to reach the airport around five because the plane to Lisbon departs at 7 a.m."),
    ("Regular exercise lowers the risk of heart disease.",
     "Working out often makes heart problems less likely."),
    ("The library will extend its opening hours during exam season, staying open until midnight "
     "from Monday to Friday so that students have a quiet place to revise.",
     "During exams the library stays open later, until twelve at night on weekdays, giving "
     "students somewhere calm to study."),
    ("The dog barked at the mail carrier.", "The postman was barked at by the dog."),
    ("Thank you very much.", "Many thanks."),
    ("The committee rejected the proposal after a long debate about its cost, its impact on the "
     "neighbourhood, and whether the city could afford to maintain the new park for decades.",
     "After arguing at length over the expense, the effect on local residents and the long-term "
     "upkeep of the park, the committee voted the plan down."),
)

EVAL_SINGLES = (
    "Hello",
    "Stop.",
    "Yes, please.",
    "Quantum computers use qubits instead of bits.",
    "The recipe calls for two cups of flour and one egg.",
    "Mount Everest is the highest mountain above sea level.",
    "I left my umbrella on the bus this morning.",
    "The orchestra performed Beethoven's ninth symphony to a full hall.",
    "Volcanic eruptions can affect the climate for several years.",
    "Is this seat taken?",
    "The invoice must be paid within thirty days.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "My grandmother grows tomatoes, beans and zucchini in her garden every summer.",
    "The referee showed the defender a red card in the final minute.",
    "Encryption protects data by turning it into unreadable ciphertext.",
    "A small boat drifted slowly across the calm lake at dawn.",
    "The museum's new exhibition explores the history of printing, from carved wooden blocks in "
    "East Asia to Gutenberg's movable type and the steam-powered presses of the nineteenth "
    "century, with working replicas that visitors can operate themselves under the guidance "
    "of trained volunteers on weekend afternoons.",
    "To apply for the scholarship, students must submit a personal statement of no more than "
    "five hundred words, two letters of recommendation from teachers who know their work well, "
    "an official transcript, and proof of enrolment for the coming academic year; incomplete "
    "applications will not be considered, and late submissions received after the fifteenth of "
    "March cannot be accepted under any circumstances whatsoever, although candidates who were "
    "ill or affected by a family emergency may write to the admissions office, which will "
    "review each request individually and reply within ten working days.",
    "Honeybees communicate the direction and distance of flowers to their hive mates through a "
    "waggle dance, whose angle relative to vertical encodes the direction of the food source "
    "relative to the sun, while the duration of the waggle run tells the other bees how far "
    "they will have to fly to reach it, an astonishing system first decoded by the Austrian "
    "biologist Karl von Frisch, who shared the Nobel Prize in 1973 for this work on animal "
    "behaviour, and whose experiments with coloured dishes of sugar water are still repeated "
    "by students today.",
    "When the power went out across the whole valley on the coldest night of the year, the "
    "neighbours gathered in the school gym, which had an old diesel generator, and spent the "
    "night sharing blankets, soup and stories while the repair crews worked in the snow to "
    "reconnect the broken line, finally restoring electricity just after sunrise to the relief "
    "of everyone, especially the families with small children and the elderly residents who "
    "had been worried about their heating and medicine.",
    "Error 404: page not found.",
    "The bridge was closed after engineers found cracks in two of its supports.",
    "Please remember to water the plants while I'm away.",
    "The spacecraft entered orbit around Jupiter after a five-year journey.",
    "Interest rates were left unchanged at the central bank's latest meeting.",
)

EVAL_SENTENCES = tuple(s for pair in EVAL_PAIRS for s in pair) + EVAL_SINGLES

CALIBRATION_SENTENCES = (
    "Good evening.",
    "Turn left at the second traffic light.",
    "The bakery sells fresh bread every morning.",
    "A group of hikers reached the summit before noon.",
    "Can you recommend a good book about history?",
    "The printer on the third floor is out of paper again.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The concert was cancelled due to heavy rain.",
    "He apologised for arriving late to the interview.",
    "Our team won the championship for the third year in a row.",
    "The river flooded several villages after the storm.",
    "I usually take the bus to work, but today I walked.",
    "The software update fixed a bug that crashed the app on startup.",
    "Vaccines train the immune system to recognise a virus.",
    "The old lighthouse has been turned into a small hotel.",
    "She speaks French, Spanish and a little Japanese.",
    "Add salt to the boiling water before the pasta.",
    "The parliament passed the new budget by a narrow margin.",
    "My laptop battery only lasts about two hours now.",
    "A fox crossed the road in front of our car.",
    "The painting was sold at auction for a record price.",
    "Wind turbines generate electricity from moving air.",
    "The children laughed at the clown's silly tricks.",
    "Please send me the report by Friday afternoon.",
    "The hospital opened a new wing for children.",
    "He repaired the bicycle's flat tyre in ten minutes.",
    "Rainforests are home to more than half of the world's species.",
    "The password must contain at least twelve characters.",
    "We watched the sunset from the top of the hill.",
    "The price of coffee has doubled in two years.",
    "Astronauts on the station grow lettuce in space.",
    "The teacher asked the students to read chapter five.",
    "A loud noise woke everyone up in the middle of the night.",
    "The city plans to build a new tram line next year.",
    "My neighbour's cat keeps coming into our garden.",
    "The chess champion defended her title successfully.",
    "Fresh snow covered the mountains overnight.",
    "The airline lost my luggage on the way to Berlin.",
    "Solar panels were installed on the school roof.",
    "The detective finally solved the mysterious case.",
    "Where did you buy those shoes?",
    "The factory reduced its emissions by forty percent.",
    "An earthquake shook the coastal town early this morning.",
    "We need more volunteers for the charity run.",
    "The baby smiled for the first time today.",
    "Fix the leaking tap in the bathroom, please.",
    "The author signed copies of her new novel at the bookstore.",
    "Traffic was heavy on the motorway because of an accident.",
    "Whales migrate thousands of kilometres every year to feed and breed in different oceans.",
    "The documentary follows a family of elephants through a year of drought on the savannah, "
    "showing how the oldest female leads the herd to water she remembers from decades ago.",
    "If the server does not respond within five seconds, the client retries the request up to "
    "three times with an exponentially growing delay before reporting a network error to the "
    "user, which keeps short outages from turning into visible failures.",
    "The town council announced that the historic market square will be closed to cars from "
    "next spring, with new benches, trees and a fountain, after a survey showed that most "
    "residents wanted more space for walking, cafes and the weekly farmers' market.",
    "Learning a musical instrument as an adult takes patience: progress is slow at first, the "
    "fingers do not obey, and practice sessions feel repetitive, but after a few months simple "
    "pieces begin to sound like music and the effort becomes a pleasure rather than a chore.",
    "The central idea of the theory of evolution by natural selection is that individuals with "
    "traits better suited to their environment are more likely to survive and reproduce, so "
    "those traits become more common in later generations, slowly changing the population over "
    "very long periods of time.",
    "During the night shift the nurses check every patient's temperature, blood pressure and "
    "medication every four hours, write down anything unusual in the chart, and call the "
    "doctor on duty immediately if a patient's condition gets worse or a reading falls outside "
    "the safe range given by the care plan.",
    "The old railway line that once carried coal from the mines to the harbour has been turned "
    "into a cycling and walking path more than forty kilometres long, passing through tunnels, "
    "over restored viaducts and past abandoned stations that now serve as cafes, small museums "
    "and bicycle repair shops, and on summer weekends thousands of families ride along it, "
    "stopping to swim in the river or to picnic in the meadows where the freight yards used "
    "to be, while volunteers keep the surface smooth and plant wildflowers along the edges.",
    "OK",
    "Thanks a lot!",
    "Absolutely not.",
    "The keyboard is missing the letter Q.",
    "The museum is free on the first Sunday of every month.",
    "Our apartment overlooks a busy square full of street musicians.",
    "The government introduced a tax on sugary drinks.",
    "Ancient Egyptians built the pyramids as tombs for their kings.",
    "I prefer tea to coffee in the afternoon.",
)
